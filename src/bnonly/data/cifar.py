"""CIFAR-10/100 in the official python-batch format: an extracted folder or the .tar.gz itself.

Archives are read member by member with tarfile and never extracted, so the data folder can stay
read-only. The batch files are pickles; they are read with an unpickler that only admits the
numpy globals these files use, so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DataError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

#: md5 of the official archives, checked only when the file carries the official name.
ARCHIVE_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}

CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its splits, labels and class names."""

    name: str
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    num_classes=10,
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    num_classes=100,
)
LAYOUTS = (CIFAR10, CIFAR100)

_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    *((f"numpy.{core}.multiarray", n) for core in ("core", "_core") for n in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict[str, object]:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any failure means the file is not a CIFAR batch
        raise DataError(
            f"{where} is not a readable CIFAR python batch ({type(exc).__name__}: {exc}). "
            f"Replace it with the file from the official archive ({CIFAR_URL})."
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(f"{where} should hold a pickled dict, found {type(obj).__name__}.")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _field(batch: dict[str, object], key: str, where: str) -> object:
    if key not in batch:
        raise DataError(f"{where} has no '{key}' entry (found {sorted(batch)}); is it a CIFAR batch file?")
    return batch[key]


def _parse_batch(data: bytes, layout: CifarLayout, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(data, where)
    images = np.asarray(_field(batch, "data", where))
    labels = np.asarray(_field(batch, layout.label_key, where))
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{where}: 'data' should be uint8 N x 3072 (32x32 RGB, channel-major), "
            f"found {images.dtype} {images.shape}."
        )
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{where}: '{layout.label_key}' should hold {images.shape[0]} integer labels, "
            f"found {labels.dtype} {labels.shape}."
        )
    if labels.size and not (0 <= labels.min() and labels.max() < layout.num_classes):
        raise DataError(f"{where}: labels must lie in [0, {layout.num_classes}).")
    return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _parse_meta(data: bytes, layout: CifarLayout, where: str) -> list[str]:
    names = _field(_unpickle(data, where), layout.names_key, where)
    if not isinstance(names, (list, tuple)) or len(names) != layout.num_classes:
        raise DataError(f"{where}: '{layout.names_key}' should list {layout.num_classes} class names.")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def _build(files: dict[str, bytes], layout: CifarLayout, where: str) -> tuple[ArrayDataset, ArrayDataset]:
    classes = _parse_meta(files[layout.meta_file], layout, f"{where}/{layout.meta_file}")
    parts = [_parse_batch(files[f], layout, f"{where}/{f}") for f in layout.train_files]
    test_x, test_y = _parse_batch(files[layout.test_file], layout, f"{where}/{layout.test_file}")

    def split(x: np.ndarray, y: np.ndarray) -> ArrayDataset:
        return ArrayDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), classes)

    train = split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, split(test_x, test_y)


def load_cifar_folder(folder: Path, layout: CifarLayout) -> tuple[ArrayDataset, ArrayDataset]:
    """Read an extracted ``cifar-10-batches-py`` or ``cifar-100-python`` folder."""
    missing = [f for f in layout.files if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{folder} looks like {layout.folder}/ but lacks {', '.join(missing)} "
            f"(expected {', '.join(layout.files)}). Re-extract {layout.archive} from {CIFAR_URL}, "
            f"or point --data at the .tar.gz itself."
        )
    return _build({f: (folder / f).read_bytes() for f in layout.files}, layout, str(folder))


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_archive_md5(path: Path) -> None:
    """Reject an official-named archive whose md5 differs from the published one."""
    expected = ARCHIVE_MD5.get(path.name)
    if expected is None:
        return
    actual = _md5(path)
    if actual != expected:
        raise DataError(
            f"{path} has md5 {actual}, but the official {path.name} has md5 {expected}: the archive "
            f"is corrupt or incomplete (an interrupted download?). Download it again from {CIFAR_URL} "
            f"and put it at {path}."
        )


def load_cifar_archive(path: Path) -> tuple[CifarLayout, ArrayDataset, ArrayDataset]:
    """Read CIFAR-10 or CIFAR-100 straight from its .tar.gz in one sequential pass."""
    check_archive_md5(path)
    wanted = {(layout.folder, f): layout for layout in LAYOUTS for f in layout.files}
    found: dict[CifarLayout, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                parts = Path(member.name).parts
                layout = wanted.get(tuple(parts[-2:])) if member.isfile() and len(parts) >= 2 else None
                if layout is not None:
                    found.setdefault(layout, {})[parts[-1]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(
            f"{path} could not be read as a tar archive ({type(exc).__name__}: {exc}); it is corrupt or "
            f"incomplete. Download cifar-10-python.tar.gz or cifar-100-python.tar.gz again from {CIFAR_URL}."
        ) from exc
    complete = [layout for layout, files in found.items() if set(layout.files) <= set(files)]
    if len(complete) != 1:
        have = {layout.folder: sorted(files) for layout, files in found.items()}
        raise DataError(
            f"{path} should contain exactly one of cifar-10-batches-py/{{{','.join(CIFAR10.files)}}} or "
            f"cifar-100-python/{{{','.join(CIFAR100.files)}}}; found {have or 'no CIFAR members'}. "
            f"Use the official archive from {CIFAR_URL}."
        )
    layout = complete[0]
    train, test = _build(found[layout], layout, f"{path}:{layout.folder}")
    return layout, train, test
