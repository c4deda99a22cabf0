"""Class subsets: train and test on some of a dataset's classes, relabelled 0..k-1 in the order given.

A control a skeptic asks for (is a result an artefact of the class count?) and the start of
transfer experiments. ``open_dataset(path, classes="cat,dog")`` (or ``"3,5"``, or a mix; or
``select_classes(source, spec)``) keeps the examples of those classes in both splits, in their
original order, with class i of the spec relabelled i. It works on every format, registered
ones included, because it acts on the opened splits: an in-memory split keeps only those images
(a copy), a streamed one only those paths. An image folder's decoded cache holds the whole
folder, so every subset of it shares one cache entry.
"""

from __future__ import annotations

import dataclasses
import difflib

import torch

from .arrays import ArrayDataset
from .errors import DataError
from .stream import FolderSplit

#: At most this many valid names are quoted in an error (ImageNet has 1,000).
_SHOWN_NAMES = 30


def _valid(classes: list[str]) -> str:
    shown = ", ".join(classes[:_SHOWN_NAMES])
    more = f" and {len(classes) - _SHOWN_NAMES} more" if len(classes) > _SHOWN_NAMES else ""
    return f"valid names: {shown}{more} (or indices 0-{len(classes) - 1})"


def parse_classes(spec: str, classes: list[str]) -> list[int]:
    """The indices into ``classes`` that ``spec`` names, in its order.

    Each comma-separated item is a class name, or else an index; a name wins, so a folder whose
    classes are called "0", "1", ... is read by name. Unknown names, indices out of range,
    duplicates, empty items and fewer than two classes are refused with the valid names.
    """
    items = [item.strip() for item in spec.split(",")]
    by_name = {name: i for i, name in enumerate(classes)}
    chosen: list[int] = []
    for item in items:
        if item in by_name:
            index = by_name[item]
        elif item.lstrip("+-").isdigit():
            index = int(item)
            if not 0 <= index < len(classes):
                raise DataError(f"classes={spec!r}: index {index} is out of range for {len(classes)} classes; "
                                f"{_valid(classes)}")
        elif not item:
            raise DataError(f"classes={spec!r} has an empty item; give comma-separated class names or indices, "
                            f"{_valid(classes)}")
        else:
            close = difflib.get_close_matches(item, classes, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise DataError(f"classes={spec!r}: unknown class {item!r}{hint}; {_valid(classes)}")
        if index in chosen:
            raise DataError(f"classes={spec!r} names class {classes[index]!r} (index {index}) twice; "
                            f"name each class once")
        chosen.append(index)
    if len(chosen) < 2:
        raise DataError(f"classes={spec!r} keeps {len(chosen)} class; a classifier needs at least 2; "
                        f"{_valid(classes)}")
    return chosen


def subset_split(split: ArrayDataset | FolderSplit, chosen: list[int], names: list[str], which: str,
                 spec: str) -> ArrayDataset | FolderSplit:
    """``split`` with only the examples of classes ``chosen`` (indices into ``split.classes``),
    labelled by their position there and named ``names``; ``which`` and ``spec`` go into errors."""
    relabel = torch.full((len(split.classes),), -1, dtype=torch.int64)
    relabel[torch.tensor(chosen)] = torch.arange(len(chosen))
    new = relabel[split.labels]
    keep = new >= 0
    if not bool(keep.any()):
        raise DataError(f"classes={spec!r}: the {which} split has no examples of {', '.join(names)}")
    if isinstance(split, ArrayDataset):
        return ArrayDataset(split.images[keep], new[keep], names)
    if isinstance(split, FolderSplit):
        return dataclasses.replace(split, paths=split.paths[keep.numpy()], labels=new[keep], classes=names)
    raise TypeError(f"cannot take classes of a {type(split).__name__}; expected an ArrayDataset or FolderSplit")

