"""Datasets and batch sources: open a data path, then iterate seeded, resumable, shardable batches.

``open_dataset`` opens a path with the first registered format (``DATA_FORMATS``) that detects
it: built in are ``synthetic``, image folders (decoded once into cached arrays when small,
streamed otherwise) and CIFAR-10/100 python batches (folder or .tar.gz); ``make_batches`` turns
a split into what the training loop iterates; ``open_dataset(path, classes="cat,dog")`` (or
``select_classes``) keeps some classes, relabelled 0..k-1 in the order given.
"""

from . import formats  # noqa: F401  (registers the built-in data formats)
from .arrays import ArrayDataset
from .batches import (
    ARRAY_AUGMENTS,
    NORMALIZATIONS,
    STREAM_AUGMENTS,
    BatchSource,
    DeviceBatches,
    ShardPlan,
    StreamBatches,
    make_batches,
)
from .errors import DataError
from .source import (
    DATA_FORMATS,
    DatasetSource,
    OpenOptions,
    array_source,
    detect_format,
    local_path,
    open_dataset,
    select_classes,
)
from .stream import FolderSplit

__all__ = [
    "ARRAY_AUGMENTS",
    "ArrayDataset",
    "BatchSource",
    "DATA_FORMATS",
    "DataError",
    "DatasetSource",
    "DeviceBatches",
    "FolderSplit",
    "NORMALIZATIONS",
    "OpenOptions",
    "STREAM_AUGMENTS",
    "ShardPlan",
    "StreamBatches",
    "array_source",
    "detect_format",
    "local_path",
    "make_batches",
    "open_dataset",
    "select_classes",
]
