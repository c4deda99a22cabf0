"""Batch sources: what the training loop iterates, one epoch at a time, resumable mid-epoch.

Every random choice of an epoch (order, crop offsets, flips) is a function of (seed, epoch) alone,
so ``batches(e, s)`` yields exactly the tail of ``batches(e, 0)`` from batch ``s``, and with
``world_size`` ranks each rank takes its slice of every global batch: concatenating the ranks'
batch ``b`` gives the single-process batch ``b``. ``batch_size`` is always the global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..errors import ConfigError
from ..host import usable_cores
from .arrays import ArrayDataset
from .stream import FolderSplit

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # The framework normalized CIFAR with ImageNet statistics too; that is the default.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # pixels / 255, in [0, 1]
}
#: "auto" picks "cifar" for arrays and "imagenet" for streams.
ARRAY_AUGMENTS = ("auto", "cifar", "none")
STREAM_AUGMENTS = ("auto", "imagenet", "none")
CIFAR_PAD = 4

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchSource(Protocol):
    num_examples: int

    def num_batches(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]: ...


def _words(*values: int) -> list[int]:
    return [v & (2**64 - 1) for v in values]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for one epoch's draws: the same on every rank and every device."""
    state = np.random.SeedSequence(_words(seed, epoch)).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one streamed item's augmentation in one epoch."""
    return np.random.default_rng(_words(seed, epoch, index))


def _choose(kind: str, value: str, valid: tuple[str, ...] | dict) -> str:
    if value not in valid:
        raise ConfigError(f"unknown {kind} {value!r}; valid choices: {', '.join(valid)}")
    return value


@dataclass(frozen=True)
class ShardPlan:
    """Which epoch positions each batch of one rank covers.

    Global batch b covers positions [b*B, min((b+1)*B, n)); rank r takes the r-th of
    ``world_size`` contiguous chunks of it, sized as torch.tensor_split does. All ranks yield the
    same number of batches; only a final partial batch (drop_last=False) can split unevenly.
    """

    n: int
    batch_size: int
    drop_last: bool
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(
                f"need batch_size >= 1, world_size >= 1 and 0 <= rank < world_size; got batch_size="
                f"{self.batch_size}, rank={self.rank}, world_size={self.world_size}"
            )
        if self.batch_size % self.world_size:
            raise ConfigError(
                f"batch_size {self.batch_size} is the global batch and must divide evenly across "
                f"world_size={self.world_size} ranks"
            )
        if self.drop_last and self.n < self.batch_size:
            raise ConfigError(
                f"the split has {self.n} examples, fewer than one batch of {self.batch_size}; "
                f"use a smaller batch_size or drop_last=False"
            )

    def num_batches(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def positions(self, b: int) -> tuple[int, int]:
        lo = b * self.batch_size
        size = min(self.batch_size, self.n - lo)
        base, extra = divmod(size, self.world_size)
        start = lo + self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    @property
    def num_examples(self) -> int:
        full = self.n // self.batch_size
        per_rank = full * (self.batch_size // self.world_size)
        if self.drop_last or self.n == full * self.batch_size:
            return per_rank
        start, stop = self.positions(full)
        return per_rank + stop - start

    def check_start(self, start: int) -> None:
        if not 0 <= start <= self.num_batches():
            raise ConfigError(f"start batch {start} is outside 0..{self.num_batches()}")


def _normalizer(normalize: str, channels: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) with x * scale + shift == (x / 255 - mean) / std."""
    stats = NORMALIZATIONS[_choose("normalize", normalize, NORMALIZATIONS)]
    mean, std = (torch.tensor(v, dtype=torch.float64) for v in stats)
    if channels != len(mean):
        raise ConfigError(f"normalization needs {len(mean)}-channel images, got {channels} channels")
    scale, shift = 1.0 / (255.0 * std), -mean / std
    return scale.float().view(1, -1, 1, 1).to(device), shift.float().view(1, -1, 1, 1).to(device)


def _to_float(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 -> normalized ``dtype``, keeping x's memory format."""
    out = x.to(torch.float32).mul_(scale).add_(shift)
    return out if dtype == torch.float32 else out.to(dtype)


class DeviceBatches:
    """Batches from an in-memory split kept on the device as uint8, augmented there in batch.

    For epoch e a generator seeded from (seed, e) draws the permutation, then per epoch position
    a crop offset in 0..2*pad for each axis and a flip bit; a batch is a window of each
    image in a zero-padded copy of the split, made on the first augmented batch.
    """

    def __init__(
        self,
        split: ArrayDataset,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        device: torch.device | str,
        augment: str,
        normalize: str,
        channels_last: bool,
        dtype: torch.dtype = torch.float32,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        augment = _choose("augment for in-memory data", augment, ARRAY_AUGMENTS)
        self.device = torch.device(device)
        self.train = train
        self.augment = train and augment in ("auto", "cifar")
        self.seed = seed
        self.channels_last = channels_last
        self.dtype = dtype
        self.plan = ShardPlan(len(split), batch_size, train if drop_last is None else drop_last, rank, world_size)
        self.num_examples = self.plan.num_examples
        self.image_size = tuple(split.images.shape[2:])
        self.images = split.images.to(self.device)
        if self.augment:  # kept padded for the crops (see _gather): 1.56x the memory for CIFAR
            pad = (CIFAR_PAD,) * 4
            self.images = torch.nn.functional.pad(self.images, pad).permute(0, 2, 3, 1).contiguous()
        self._padded_images: torch.Tensor | None = None
        self.labels = split.labels.to(self.device)
        self.scale, self.shift = _normalizer(normalize, split.images.shape[1], self.device)

    def num_batches(self) -> int:
        return self.plan.num_batches()

    def epoch_draws(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(order, offsets, flips) for the whole epoch, indexed by epoch position.

        offsets is n x 2 (row, column) in 0..2*pad into the zero-padded image; flips is bool n.
        Both are None without augmentation; order is arange(n) without shuffling.
        """
        n = self.plan.n
        gen = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=gen) if self.train else torch.arange(n)
        if not self.augment:
            return order.to(self.device), None, None
        offsets = torch.randint(0, 2 * CIFAR_PAD + 1, (n, 2), generator=gen)
        flips = torch.randint(0, 2, (n,), generator=gen, dtype=torch.bool)
        return order.to(self.device), offsets.to(self.device), flips.to(self.device)

    def _gather(self, idx: torch.Tensor, offsets: torch.Tensor | None, flips: torch.Tensor | None) -> torch.Tensor:
        """uint8 n x C x H x W of images ``idx``, cropped and flipped, in the requested memory format.

        With augmentation the images are kept zero-padded, N x (H+2p) x (W+2p) x C: a batch
        gathers whole padded images (``index_select``), each crop is a window of an ``unfold``
        view picked by the image's offsets, and the flip bits choose between the crop and its
        mirror. Indexing every output value instead (four broadcast index tensors) cost 2.2 ms per
        CIFAR batch on the CPU, about 3% of a step; this takes about 0.4 ms. Padding each batch
        instead of the split once measured 1.4 ms (the 3-channel transpose is the slow part)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if offsets is None:
            return torch.index_select(self.images, 0, idx).contiguous(memory_format=fmt)
        height, width = self.image_size
        padded = torch.index_select(self.images, 0, idx)  # n, H+2p, W+2p, C
        windows = padded.unfold(1, height, 1).unfold(2, width, 1)  # n, 2p+1, 2p+1, C, H, W
        x = windows[torch.arange(len(idx), device=self.device), offsets[:, 0], offsets[:, 1]]  # channels_last
        x = torch.where(flips.view(-1, 1, 1, 1), x.flip(3), x)  # not x[flips]: on a GPU that syncs
        return x.contiguous(memory_format=fmt)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.plan.check_start(start)
        order, offsets, flips = self.epoch_draws(epoch)
        for b in range(start, self.num_batches()):
            lo, hi = self.plan.positions(b)
            idx = order[lo:hi]
            x = self._gather(idx, None if offsets is None else offsets[lo:hi], None if flips is None else flips[lo:hi])
            yield _to_float(x, self.scale, self.shift, self.dtype), self.labels[idx]


class _ShardBatchSampler:
    """Yields, per batch of this rank, the (index, epoch) items the workers load; set epoch/start first."""

    def __init__(self, plan: ShardPlan, seed: int, shuffle: bool) -> None:
        self.plan, self.seed, self.shuffle = plan, seed, shuffle
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.plan.num_batches() - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        n = self.plan.n
        order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch)) if self.shuffle else torch.arange(n)
        for b in range(self.start, self.plan.num_batches()):
            lo, hi = self.plan.positions(b)
            yield [(i, self.epoch) for i in order[lo:hi].tolist()]


class _StreamItems(torch.utils.data.Dataset):
    def __init__(self, split: FolderSplit, augment: bool, seed: int) -> None:
        self.split, self.augment, self.seed = split, augment, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, epoch = item
        rng = item_rng(self.seed, epoch, index) if self.augment else None
        return self.split.load(index, rng), int(self.split.labels[index])


class StreamBatches:
    """Batches streamed from disk by a DataLoader; uint8 crops travel to the device, then normalize there."""

    def __init__(
        self,
        split: FolderSplit,
        *,
        batch_size: int,
        train: bool,
        seed: int,
        device: torch.device | str,
        augment: str,
        normalize: str,
        channels_last: bool,
        dtype: torch.dtype = torch.float32,
        drop_last: bool | None = None,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        augment = _choose("augment for streamed data", augment, STREAM_AUGMENTS)
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.dtype = dtype
        self.plan = ShardPlan(len(split), batch_size, train if drop_last is None else drop_last, rank, world_size)
        self.num_examples = self.plan.num_examples
        self.scale, self.shift = _normalizer(normalize, 3, self.device)
        self.sampler = _ShardBatchSampler(self.plan, seed, shuffle=train)
        # More workers than the cores this process may use only contend for them (torch warns that
        # it may freeze); each item's augmentation is seeded by its index, so the count changes no result.
        num_workers = min(num_workers, usable_cores())
        self.loader = torch.utils.data.DataLoader(
            _StreamItems(split, train and augment in ("auto", "imagenet"), seed),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
        )

    def num_batches(self) -> int:
        return self.plan.num_batches()

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        self.plan.check_start(start)
        self.sampler.epoch, self.sampler.start = epoch, start
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield _to_float(x, self.scale, self.shift, self.dtype), y.to(self.device, non_blocking=True)


def make_batches(
    split: ArrayDataset | FolderSplit,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    device: torch.device | str,
    augment: str,
    normalize: str,
    channels_last: bool,
    dtype: torch.dtype = torch.float32,
    drop_last: bool | None = None,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DeviceBatches | StreamBatches:
    """A BatchSource over ``split``: on-device batches for arrays, a DataLoader for streamed folders.

    Training shuffles and, by default, drops the last partial batch; evaluation keeps the file
    order, never augments, and keeps every example. ``batch_size`` is the global batch; rank
    ``rank`` of ``world_size`` gets its slice of each. ``num_workers`` applies to streams only.
    """
    common = dict(
        batch_size=batch_size, train=train, seed=seed, device=device, augment=augment, normalize=normalize,
        channels_last=channels_last, dtype=dtype, drop_last=drop_last, rank=rank, world_size=world_size,
    )
    if isinstance(split, ArrayDataset):
        return DeviceBatches(split, **common)
    if isinstance(split, FolderSplit):
        return StreamBatches(split, num_workers=num_workers, **common)
    raise TypeError(f"make_batches needs an ArrayDataset or FolderSplit, got {type(split).__name__}")
