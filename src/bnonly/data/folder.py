"""Image folders ``ROOT/{train,test|val}/<class>/*.jpg``: scanning, one-time decoding, the array cache.

Small same-size images (CIFAR as JPEGs) are decoded once, in parallel, and cached as uint8 .npy
arrays outside the data folder, keyed by the folder's absolute path and a fingerprint of its file
list, so a changed folder is decoded again and an unchanged one loads in about a second.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..host import default_cache_dir, usable_cores
from .arrays import ArrayDataset
from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TEST_SPLIT_NAMES = ("test", "val")
#: Images at most this many pixels on each side, all of one size, are decoded into memory.
MAX_ARRAY_SIDE = 64
#: Bump when the cache layout or decoding changes, so old entries are not reused.
CACHE_VERSION = 1
_PROBE_COUNT = 64
_PARALLEL_MIN = 2000
_CHUNK = 500


@dataclass(frozen=True)
class FolderIndex:
    """The files of an image folder: per split, paths relative to ``root`` and labels."""

    root: Path
    classes: list[str]
    test_name: str
    files: dict[str, list[str]]
    labels: dict[str, np.ndarray]

    def all_files(self) -> list[str]:
        return self.files["train"] + self.files["test"]


def is_image_folder(path: Path) -> bool:
    return (path / "train").is_dir() and any((path / t).is_dir() for t in TEST_SPLIT_NAMES)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def scan_folder(root: Path) -> FolderIndex:
    """List ``root/train`` and ``root/test`` (or ``val``); classes are train's sorted folder names."""
    test_name = next((t for t in TEST_SPLIT_NAMES if (root / t).is_dir()), None)
    if not (root / "train").is_dir() or test_name is None:
        have = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:12]
        raise DataError(
            f"{root} is not an image folder: expected train/ and test/ (or val/) subfolders with one "
            f"folder of images per class; found {have or 'nothing'}. Create them, or point --data at "
            f"cifar-10-python.tar.gz or cifar-10-batches-py/."
        )
    classes = _class_dirs(root / "train")
    if not classes:
        raise DataError(
            f"{root / 'train'} has no class folders: expected train/<class>/*.jpg (or .png ...), "
            f"one folder per class."
        )
    files: dict[str, list[str]] = {}
    labels: dict[str, np.ndarray] = {}
    for split, dirname in (("train", "train"), ("test", test_name)):
        extra = sorted(set(_class_dirs(root / dirname)) - set(classes))
        if extra:
            raise DataError(
                f"{root / dirname} has class folders {extra} that train/ lacks; both splits must use "
                f"the same class folder names."
            )
        names: list[str] = []
        split_labels: list[int] = []
        for label, cls in enumerate(classes):
            cls_dir = root / dirname / cls
            found = sorted(e.name for e in os.scandir(cls_dir) if e.is_file() and _is_image(e.name)) \
                if cls_dir.is_dir() else []
            if not found and split == "train":
                raise DataError(
                    f"{cls_dir} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}); every class "
                    f"folder under train/ needs at least one."
                )
            names += [f"{dirname}/{cls}/{n}" for n in found]
            split_labels += [label] * len(found)
        if not names:
            raise DataError(f"{root / dirname} holds no images in its class folders.")
        files[split] = names
        labels[split] = np.asarray(split_labels, dtype=np.int64)
    return FolderIndex(root, classes, test_name, files, labels)


def open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            if img.mode == "RGB":
                img.load()
                return img
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path} ({type(exc).__name__}: {exc}); fix or remove it.") from exc


def probe_sizes(index: FolderIndex) -> set[tuple[int, int]]:
    """(width, height) of an evenly spread sample of images, read from their headers only."""
    names = index.all_files()
    picks = sorted({round(i * (len(names) - 1) / max(_PROBE_COUNT - 1, 1)) for i in range(_PROBE_COUNT)})
    sizes = set()
    for i in picks:
        try:
            with Image.open(index.root / names[i]) as img:
                sizes.add(img.size)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image {index.root / names[i]} ({exc}); fix or remove it.") from exc
    return sizes


def fits_in_memory(sizes: set[tuple[int, int]]) -> bool:
    return len(sizes) == 1 and max(next(iter(sizes))) <= MAX_ARRAY_SIDE


class SizeMismatch(Exception):
    """An image's size differs from the rest, so the folder cannot become one array."""


def _decode_chunk(args: tuple[str, list[str], tuple[int, int]]) -> np.ndarray:
    root, names, (width, height) = args
    out = np.empty((len(names), height, width, 3), dtype=np.uint8)
    for i, name in enumerate(names):
        img = open_rgb(Path(root) / name)
        if img.size != (width, height):
            raise SizeMismatch(f"{name} is {img.size[0]}x{img.size[1]}, others are {width}x{height}")
        out[i] = np.asarray(img)
    return out


def decode_images(root: Path, names: list[str], size: tuple[int, int], workers: int | None = None) -> np.ndarray:
    """Decode ``names`` (all ``size`` = (width, height)) into uint8 N x 3 x H x W, in parallel."""
    chunks = [(str(root), names[i:i + _CHUNK], size) for i in range(0, len(names), _CHUNK)]
    workers = workers or usable_cores()
    if len(names) < _PARALLEL_MIN or workers == 1:
        parts = [_decode_chunk(c) for c in chunks]
    else:
        # fork: the children only run PIL and numpy, and need not re-import torch.
        method = "fork" if sys.platform == "linux" else None
        with multiprocessing.get_context(method).Pool(min(workers, len(chunks))) as pool:
            parts = pool.map(_decode_chunk, chunks, chunksize=1)
    nhwc = np.concatenate(parts) if parts else np.empty((0, size[1], size[0], 3), np.uint8)
    return np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))


def fingerprint(index: FolderIndex) -> str:
    """Hash of the absolute path and every file's name, size and mtime."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}\0{index.root.resolve()}\0{index.classes}\n".encode())
    for name in index.all_files():
        st = os.stat(index.root / name)
        digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _entry_prefix(root: Path) -> str:
    resolved = root.resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.name)[:40] or "root"
    return f"{slug}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:12]}-"


def _check_cache_location(cache_root: Path, data_root: Path) -> None:
    cache, data = cache_root.resolve(), data_root.resolve()
    if cache == data or data in cache.parents:
        raise DataError(
            f"cache dir {cache} is inside the data folder {data}; the data folder is treated as "
            f"read-only. Pass a cache_dir (or set $BNONLY_CACHE) outside it."
        )


def _save_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


def _read_cache(entry: Path, key: str, classes: list[str], counts: dict[str, int]) -> dict[str, np.ndarray] | None:
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("key") != key or meta.get("classes") != classes:
            return None
        arrays = {name: np.load(entry / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
    except (OSError, ValueError):
        return None
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 4 or len(images) != counts[split] \
                or labels.shape != (counts[split],):
            return None
    return arrays


def _write_cache(entry: Path, key: str, classes: list[str], arrays: dict[str, np.ndarray], source: Path) -> None:
    try:
        entry.mkdir(parents=True, exist_ok=True)
        for name in _ARRAYS:
            _save_atomic(entry / f"{name}.npy", lambda f, a=arrays[name]: np.save(f, a, allow_pickle=False))
        meta = {"key": key, "classes": classes, "source": str(source.resolve()), "version": CACHE_VERSION}
        # meta.json last: its presence with the right key marks a complete entry.
        _save_atomic(entry / "meta.json", lambda f: f.write(json.dumps(meta, indent=1).encode()))
    except OSError as exc:
        warnings.warn(f"could not write the decoded-image cache at {entry} ({exc}); it will be decoded again next time",
                      stacklevel=2)
        return
    prefix = _entry_prefix(source)
    for stale in entry.parent.glob(f"{prefix}*"):
        if stale != entry and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def load_arrays(index: FolderIndex, size: tuple[int, int], cache_dir: Path | None) -> tuple[ArrayDataset, ArrayDataset]:
    """Both splits as arrays, from the cache when the folder is unchanged, else decoded and cached.

    Raises SizeMismatch when an image differs from ``size`` = (width, height).
    """
    cache_root = (cache_dir or default_cache_dir()) / "imagefolder"
    _check_cache_location(cache_root, index.root)
    key = fingerprint(index)
    entry = cache_root / f"{_entry_prefix(index.root)}{key[:16]}"
    counts = {s: len(index.files[s]) for s in ("train", "test")}
    arrays = _read_cache(entry, key, index.classes, counts)
    if arrays is None:
        arrays = {}
        for split in ("train", "test"):
            arrays[f"{split}_images"] = decode_images(index.root, index.files[split], size)
            arrays[f"{split}_labels"] = index.labels[split]
        _write_cache(entry, key, index.classes, arrays, index.root)
    return tuple(  # type: ignore[return-value]
        ArrayDataset(torch.from_numpy(arrays[f"{s}_images"]), torch.from_numpy(arrays[f"{s}_labels"]), index.classes)
        for s in ("train", "test")
    )
