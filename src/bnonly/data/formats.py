"""The built-in data formats, registered in the order ``open_dataset`` tries them.

An image folder is tried before the CIFAR formats, so a folder that has ``train/`` and ``test/``
is read as images even if it also holds a CIFAR folder or archive; a CIFAR folder (extracted or
inside the path) wins over a CIFAR archive beside it.
"""

from __future__ import annotations

from pathlib import Path

from .cifar import CIFAR10, CIFAR10_CLASSES, CIFAR100, LAYOUTS, CifarLayout, load_cifar_archive, load_cifar_folder
from .errors import DataError
from .folder import SizeMismatch, fits_in_memory, is_image_folder, load_arrays, probe_sizes, scan_folder
from .source import DATA_FORMATS, DatasetSource, OpenOptions, array_source, local_path
from .stream import folder_splits
from .synthetic import make_synthetic, parse_synthetic

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def _is_synthetic(path: str) -> bool:
    return path == "synthetic" or path.startswith("synthetic:")


@DATA_FORMATS.register("synthetic", detect=_is_synthetic,
                       help="learnable random data for tests: synthetic[:train=512,test=256,classes=10,size=32,seed=0]")
def _open_synthetic(path: str, options: OpenOptions) -> DatasetSource:
    train, test = make_synthetic(**parse_synthetic(path))
    return array_source("synthetic", train, test, path)


@DATA_FORMATS.register("imagefolder", detect=lambda path: is_image_folder(local_path(path)),
                       help="ROOT/{train,test|val}/<class>/*: decoded once into cached arrays when small, else "
                            "streamed")
def _open_image_folder(path: str, options: OpenOptions) -> DatasetSource:
    root = local_path(path)
    index = scan_folder(root)
    if options.stream is not True:
        sizes = probe_sizes(index)
        if options.stream is False and len(sizes) != 1:
            raise DataError(f"{root}: images differ in size ({sorted(sizes)[:4]}); stream=False needs one size.")
        if fits_in_memory(sizes) or options.stream is False:
            try:
                train, test = load_arrays(index, next(iter(sizes)), options.cache_dir)
            except SizeMismatch as exc:
                if options.stream is False:
                    raise DataError(f"{root}: images differ in size ({exc}); stream=False needs one size.") from None
            else:
                is_cifar10 = index.classes == CIFAR10_CLASSES and train.image_size == (32, 32)
                return array_source("cifar10" if is_cifar10 else "imagefolder", train, test, str(root))
    crop = options.crop_size
    resize = options.resize_size if options.resize_size is not None else round(crop * 256 / 224)
    train, test = folder_splits(index, crop, resize)
    return DatasetSource("imagefolder", "stream", train, test, index.classes, crop, str(root))


def _one_of(root: Path, found: list[tuple[Path, CifarLayout]]) -> tuple[Path, CifarLayout] | None:
    """The one CIFAR variant found inside ``root``; both CIFAR-10 and CIFAR-100 is an error."""
    if len(found) > 1:
        raise DataError(
            f"{root} holds both CIFAR-10 and CIFAR-100 ({', '.join(f.name for f, _ in found)}); "
            f"point --data at the one you want."
        )
    return found[0] if found else None


def _layout_of(folder: Path) -> CifarLayout | None:
    """The CIFAR layout of an extracted folder, judged by its name or its files, else None."""
    for layout in LAYOUTS:
        if folder.name == layout.folder:
            return layout
    if (folder / CIFAR10.train_files[0]).is_file() or (folder / CIFAR10.meta_file).is_file():
        return CIFAR10
    if (folder / CIFAR100.meta_file).is_file() and (folder / CIFAR100.train_files[0]).is_file():
        return CIFAR100
    return None


def _cifar_folder(path: str) -> tuple[Path, CifarLayout] | None:
    """An extracted CIFAR folder: the path itself, or the one inside it."""
    root = local_path(path)
    if not root.is_dir():
        return None
    layout = _layout_of(root)
    if layout is not None:
        return root, layout
    return _one_of(root, [(root / layout.folder, layout) for layout in LAYOUTS if (root / layout.folder).is_dir()])


@DATA_FORMATS.register("cifar-folder", detect=lambda path: _cifar_folder(path) is not None,
                       help="cifar-10-batches-py/ or cifar-100-python/ (python batches), or a folder holding one")
def _open_cifar_folder(path: str, options: OpenOptions) -> DatasetSource:
    folder, layout = _cifar_folder(path)
    return array_source(layout.name, *load_cifar_folder(folder, layout), str(folder))


def _cifar_archive(path: str) -> Path | None:
    """A CIFAR archive: the path itself, or the one with the official name inside it."""
    root = local_path(path)
    if root.is_file():
        return root if root.name.endswith(ARCHIVE_SUFFIXES) else None
    inside = [(root / layout.archive, layout) for layout in LAYOUTS if (root / layout.archive).is_file()]
    found = _one_of(root, inside) if root.is_dir() else None
    return None if found is None else found[0]


@DATA_FORMATS.register("cifar-archive", detect=lambda path: _cifar_archive(path) is not None,
                       help="cifar-10-python.tar.gz or cifar-100-python.tar.gz, read in place (md5 checked), or a "
                            "folder holding one")
def _open_cifar_archive(path: str, options: OpenOptions) -> DatasetSource:
    archive = _cifar_archive(path)
    layout, train, test = load_cifar_archive(archive)
    return array_source(layout.name, train, test, str(archive))
