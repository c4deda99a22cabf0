"""``open_dataset``: find out what a data path holds and return its train and test splits.

Each data format is registered in :data:`DATA_FORMATS` with ``detect(path) -> bool`` and an
opener ``open(path, options) -> DatasetSource``; ``open_dataset`` opens a path with the first
format, in registration order, that detects it (the built-in ones are in ``formats.py``)::

    @DATA_FORMATS.register("npz", detect=lambda path: local_path(path).suffix == ".npz", help="one .npz file")
    def open_npz(path: str, options: OpenOptions) -> DatasetSource:
        ...
        return array_source("npz", train, test, path)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ..registry import Registry
from .arrays import ArrayDataset
from .classes import parse_classes, subset_split
from .errors import EXPECTED, HOW_TO_FIX, DataError
from .folder import TEST_SPLIT_NAMES, scan_folder
from .stream import FolderSplit

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


@dataclass(frozen=True)
class OpenOptions:
    """How to open what was detected: ``cache_dir`` for decoded arrays (None: the default),
    ``crop_size``/``resize_size`` for streamed images, ``stream`` to force (True) or forbid
    (False) streaming. A format uses the ones that apply to it."""

    cache_dir: Path | None = None
    crop_size: int = 224
    resize_size: int | None = None
    stream: bool | None = None


Opener = Callable[[str, OpenOptions], DatasetSource]

DATA_FORMATS: Registry[Opener] = Registry("data format", (
    "an opener open(path, options: OpenOptions) -> DatasetSource (array_source builds one from two "
    "ArrayDatasets), raising DataError that says what is wrong and how to fix it; register it with "
    "detect= (path -> bool, cheap, may raise DataError for an ambiguous path) and help= (one line)"))


def local_path(path: str) -> Path:
    """``path`` as a filesystem path (``~`` expanded)."""
    return Path(os.path.expanduser(path))


def array_source(name: str, train: ArrayDataset, test: ArrayDataset, path: str) -> DatasetSource:
    """An in-memory source, refused unless both splits hold square images of one shape."""
    if train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(
            f"{path}: train images are {tuple(train.images.shape[1:])} but test images are "
            f"{tuple(test.images.shape[1:])}; both splits must share one image shape."
        )
    height, width = train.image_size
    if height != width:
        raise DataError(f"{path}: images are {width}x{height}; square images are expected.")
    return DatasetSource(name, "array", train, test, train.classes, height, path)


def _nothing_found(path: str) -> DataError:
    """The error for a path no format detects: what was expected, what is there, how to fix it."""
    root = local_path(path)
    if not root.exists():
        return DataError(f"data path '{path}' does not exist (resolved to {root.resolve()}). {HOW_TO_FIX}")
    if root.is_file():
        return DataError(f"data path {root} is a file but not a .tar.gz archive; expected {EXPECTED}. {HOW_TO_FIX}")
    if any((root / split).is_dir() for split in ("train", *TEST_SPLIT_NAMES)):
        scan_folder(root)  # an image folder lacking a split: its message names the missing one
    listing = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
    shown = ", ".join(listing[:10]) + (f" and {len(listing) - 10} more" if len(listing) > 10 else "")
    return DataError(
        f"no dataset found in {root.resolve()}: expected {EXPECTED}; found {shown or 'an empty folder'}. {HOW_TO_FIX}"
    )


def open_dataset(
    path: str,
    *,
    cache_dir: str | None = None,
    crop_size: int = 224,
    resize_size: int | None = None,
    stream: bool | None = None,
    classes: str = "",
) -> DatasetSource:
    """Open the dataset at ``path`` with the first registered format that detects it.

    Built in: "synthetic[:key=value,...]", an image folder with ``train/`` and ``test/`` (or
    ``val/``), an extracted ``cifar-10-batches-py``/``cifar-100-python`` folder or a folder holding
    one, and a CIFAR-10/100 ``.tar.gz`` or a folder holding one. Image folders of small same-size
    images are decoded once and cached under ``cache_dir`` (default ``$BNONLY_CACHE`` or
    ``~/.cache/bnonly``); others stream from disk with crops of ``crop_size`` (test images are
    first resized to ``resize_size``, default crop_size * 256/224). ``stream`` forces one way.
    ``classes`` keeps only those classes, relabelled in its order (:func:`select_classes`).
    Raises DataError, saying what was expected and how to fix it, when nothing usable is there.
    """
    options = OpenOptions(local_path(cache_dir) if cache_dir is not None else None, crop_size, resize_size, stream)
    return select_classes(DATA_FORMATS.get(detect_format(path))(path, options), classes)


def select_classes(source: DatasetSource, spec: str) -> DatasetSource:
    """``source`` with only the classes ``spec`` names, comma-separated names or indices (see
    :func:`~bnonly.data.classes.parse_classes`), relabelled 0..k-1 in its order, in both splits;
    ``source.classes`` lists them in that order. ``""`` keeps every class: ``source`` itself."""
    if not spec.strip():
        return source
    chosen = parse_classes(spec, source.classes)
    names = [source.classes[i] for i in chosen]
    return replace(source, train=subset_split(source.train, chosen, names, "train", spec),
                               test=subset_split(source.test, chosen, names, "test", spec), classes=names)


def detect_format(path: str) -> str:
    """The name of the first registered format that detects ``path`` (cheap: nothing is read but
    folder listings); raises the DataError ``open_dataset`` would when none does."""
    for entry in DATA_FORMATS.entries():
        if entry.extra["detect"](path):
            return entry.name
    raise _nothing_found(path)
