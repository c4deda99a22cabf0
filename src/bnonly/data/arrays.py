"""In-memory splits: the whole split as one uint8 tensor, moved to the training device once."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ArrayDataset:
    """A split that fits in memory: ``images`` uint8 N x C x H x W (contiguous), ``labels`` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    kind = "array"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 N x C x H x W, got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be int64 of shape ({self.images.shape[0]},), "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        self.images = self.images.contiguous()
        if self.labels.numel() and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}) for {len(self.classes)} classes")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.images.shape[2], self.images.shape[3])
