"""Datasets and batch sources: open a data path, then iterate seeded, resumable, shardable batches.

``open_dataset`` detects CIFAR-10/100 python batches (folder or .tar.gz), image folders
(decoded once into cached arrays when small, streamed otherwise) and ``synthetic``;
``make_batches`` turns a split into what the training loop iterates.
"""

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
from .source import DatasetSource, open_dataset
from .stream import FolderSplit

__all__ = [
    "ARRAY_AUGMENTS",
    "ArrayDataset",
    "BatchSource",
    "DataError",
    "DatasetSource",
    "DeviceBatches",
    "FolderSplit",
    "NORMALIZATIONS",
    "STREAM_AUGMENTS",
    "ShardPlan",
    "StreamBatches",
    "make_batches",
    "open_dataset",
]
