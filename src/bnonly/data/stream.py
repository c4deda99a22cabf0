"""Streaming splits for ImageNet-style folders: images read with PIL and transformed per item.

The transforms are the paper's, written here on PIL so torchvision is not needed:
train = RandomResizedCrop(crop, scale=(0.1, 1), ratio=(0.8, 1.25)) + horizontal flip;
test = resize the shorter side to ``resize`` then center-crop ``crop``. Every random draw comes
from a generator seeded by (seed, epoch, index), so an item's augmentation does not depend on
worker count, order of loading, or where in the epoch a resumed run starts (see batches.item_rng).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .folder import FolderIndex, open_rgb

DEFAULT_SCALE = (0.1, 1.0)
DEFAULT_RATIO = (0.8, 1.25)


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height), drawn as torchvision's RandomResizedCrop.get_params does."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(
    img: Image.Image, crop: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Image.Image:
    left, top, w, h = random_resized_crop_box(img.width, img.height, scale, ratio, rng)
    out = img.resize((crop, crop), Image.BILINEAR, box=(left, top, left + w, top + h))
    return out.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def eval_transform(img: Image.Image, resize: int, crop: int) -> Image.Image:
    """Shorter side to ``resize`` (aspect kept, as torchvision's Resize(int)), then center ``crop``."""
    w, h = img.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    img = img.resize(size, Image.BILINEAR)
    top = int(round((size[1] - crop) / 2.0))
    left = int(round((size[0] - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def to_chw_uint8(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


@dataclass
class FolderSplit:
    """A split streamed from disk. Paths are one numpy bytes array, so forked workers share it cheaply."""

    root: str
    paths: np.ndarray
    labels: torch.Tensor
    classes: list[str]
    crop_size: int = 224
    resize_size: int = 256
    scale: tuple[float, float] = DEFAULT_SCALE
    ratio: tuple[float, float] = DEFAULT_RATIO
    kind = "stream"

    def __post_init__(self) -> None:
        if self.resize_size < self.crop_size:
            raise ValueError(f"resize_size {self.resize_size} must be at least crop_size {self.crop_size}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.crop_size, self.crop_size)

    def path(self, index: int) -> Path:
        return Path(self.root) / self.paths[index].decode()

    def load(self, index: int, rng: np.random.Generator | None) -> torch.Tensor:
        """Image ``index`` as uint8 3 x crop x crop: train transform with ``rng``, eval transform without."""
        img = open_rgb(self.path(index))
        if rng is None:
            img = eval_transform(img, self.resize_size, self.crop_size)
        else:
            img = train_transform(img, self.crop_size, self.scale, self.ratio, rng)
        return to_chw_uint8(img)


def folder_splits(index: FolderIndex, crop_size: int, resize_size: int) -> tuple[FolderSplit, FolderSplit]:
    def split(name: str) -> FolderSplit:
        return FolderSplit(
            root=str(index.root),
            paths=np.array([p.encode() for p in index.files[name]]),
            labels=torch.from_numpy(index.labels[name]),
            classes=index.classes,
            crop_size=crop_size,
            resize_size=resize_size,
        )

    return split("train"), split("test")
