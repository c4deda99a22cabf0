"""``open_dataset``: find out what a data path holds and return its train and test splits."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .arrays import ArrayDataset
from .cifar import CIFAR10, CIFAR10_CLASSES, CIFAR100, LAYOUTS, load_cifar_archive, load_cifar_folder
from .errors import EXPECTED, HOW_TO_FIX, DataError
from .folder import SizeMismatch, fits_in_memory, is_image_folder, load_arrays, probe_sizes, scan_folder
from .stream import FolderSplit, folder_splits
from .synthetic import make_synthetic, parse_synthetic

Split = ArrayDataset | FolderSplit


@dataclass(frozen=True)
class DatasetSource:
    """A dataset's two splits and what the model needs to know about them."""

    name: str
    kind: str
    train: Split
    test: Split
    classes: list[str]
    image_size: int
    path: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _array_source(name: str, train: ArrayDataset, test: ArrayDataset, path: str) -> DatasetSource:
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"{path}: train images are {tuple(train.images.shape[1:])} but test images are "
            f"{tuple(test.images.shape[1:])}; both splits must share one image shape."
        )
    height, width = train.image_size
    if height != width:
        raise DataError(f"{path}: images are {width}x{height}; square images are expected.")
    return DatasetSource(name, "array", train, test, train.classes, height, path)


def _cifar_layout_in(folder: Path):
    """The CIFAR layout of an extracted folder, judged by its name or its files, else None."""
    for layout in LAYOUTS:
        if folder.name == layout.folder:
            return layout
    if (folder / CIFAR10.train_files[0]).is_file() or (folder / CIFAR10.meta_file).is_file():
        return CIFAR10
    if (folder / CIFAR100.meta_file).is_file() and (folder / CIFAR100.train_files[0]).is_file():
        return CIFAR100
    return None


def _open_folder(
    root: Path, cache_dir: Path | None, crop_size: int, resize_size: int | None, stream: bool | None
) -> DatasetSource:
    index = scan_folder(root)
    if stream is not True:
        sizes = probe_sizes(index)
        if stream is False and len(sizes) != 1:
            raise DataError(f"{root}: images differ in size ({sorted(sizes)[:4]}); stream=False needs one size.")
        if fits_in_memory(sizes) or stream is False:
            try:
                train, test = load_arrays(index, next(iter(sizes)), cache_dir)
            except SizeMismatch as exc:
                if stream is False:
                    raise DataError(f"{root}: images differ in size ({exc}); stream=False needs one size.") from None
            else:
                is_cifar10 = index.classes == CIFAR10_CLASSES and train.image_size == (32, 32)
                return _array_source("cifar10" if is_cifar10 else "imagefolder", train, test, str(root))
    resize = resize_size if resize_size is not None else round(crop_size * 256 / 224)
    train, test = folder_splits(index, crop_size, resize)
    return DatasetSource("imagefolder", "stream", train, test, index.classes, crop_size, str(root))


def open_dataset(
    path: str,
    *,
    cache_dir: str | None = None,
    crop_size: int = 224,
    resize_size: int | None = None,
    stream: bool | None = None,
) -> DatasetSource:
    """Open the dataset at ``path``, detecting its format.

    ``path`` is "synthetic[:key=value,...]", a CIFAR-10/100 ``.tar.gz``, an extracted
    ``cifar-10-batches-py``/``cifar-100-python`` folder or a folder holding one of those, or an
    image folder with ``train/`` and ``test/`` (or ``val/``). Image folders of small same-size
    images are decoded once and cached under ``cache_dir`` (default ``$BNONLY_CACHE`` or
    ``~/.cache/bnonly``); others stream from disk with crops of ``crop_size`` (test images are
    first resized to ``resize_size``, default crop_size * 256/224). ``stream`` forces one way.
    Raises DataError, saying what was expected and how to fix it, when nothing usable is there.
    """
    if path == "synthetic" or path.startswith("synthetic:"):
        train, test = make_synthetic(**parse_synthetic(path))
        return _array_source("synthetic", train, test, path)
    root = Path(os.path.expanduser(path))
    cache = Path(os.path.expanduser(cache_dir)) if cache_dir is not None else None
    if not root.exists():
        raise DataError(f"data path '{path}' does not exist (resolved to {root.resolve()}). {HOW_TO_FIX}")
    if root.is_file():
        if not root.name.endswith((".tar.gz", ".tgz", ".tar")):
            raise DataError(f"data path {root} is a file but not a .tar.gz archive; expected {EXPECTED}. {HOW_TO_FIX}")
        layout, train, test = load_cifar_archive(root)
        return _array_source(layout.name, train, test, str(root))
    layout = _cifar_layout_in(root)
    if layout is not None:
        return _array_source(layout.name, *load_cifar_folder(root, layout), str(root))
    if is_image_folder(root):
        return _open_folder(root, cache, crop_size, resize_size, stream)
    candidates = [(root / layout.folder, layout) for layout in LAYOUTS if (root / layout.folder).is_dir()] \
        or [(root / layout.archive, layout) for layout in LAYOUTS if (root / layout.archive).is_file()]
    if len(candidates) > 1:
        raise DataError(
            f"{root} holds both CIFAR-10 and CIFAR-100 ({', '.join(c.name for c, _ in candidates)}); "
            f"point --data at the one you want."
        )
    if candidates:
        found, layout = candidates[0]
        if found.is_dir():
            return _array_source(layout.name, *load_cifar_folder(found, layout), str(found))
        layout, train, test = load_cifar_archive(found)
        return _array_source(layout.name, train, test, str(found))
    if (root / "train").is_dir() or any((root / t).is_dir() for t in ("test", "val")):
        scan_folder(root)  # raises the image-folder message naming the missing split
    listing = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(listing[:10]) + (f" and {len(listing) - 10} more" if len(listing) > 10 else "")
    raise DataError(
        f"no dataset found in {root.resolve()}: expected {EXPECTED}; found {shown or 'an empty folder'}. {HOW_TO_FIX}"
    )
