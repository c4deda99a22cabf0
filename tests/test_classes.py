"""Class subsets (``open_dataset(..., classes=)``): the kept examples, their new labels, every format, the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnonly.data import DataError, FolderSplit, make_batches, open_dataset, select_classes
from bnonly.data.classes import parse_classes

SYNTH = "synthetic:train=60,test=30,classes=5,size=8,seed=3"


def _expected(split, order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and new labels a subset of ``split`` must hold: examples of ``order`` in file order."""
    keep = [i for i, y in enumerate(split.labels.tolist()) if y in order]
    return split.images[keep], torch.tensor([order.index(split.labels[i].item()) for i in keep])


@pytest.mark.parametrize("spec,order", [("class3,class0,class4", [3, 0, 4]), ("3,0,4", [3, 0, 4]),
                                        (" class1 , 2 ", [1, 2])])
def test_synthetic_subset_by_name_and_index(spec, order):
    full = open_dataset(SYNTH)
    sub = open_dataset(SYNTH, classes=spec)
    assert sub.classes == [f"class{i}" for i in order] and sub.num_classes == len(order)
    for split, whole in ((sub.train, full.train), (sub.test, full.test)):
        images, labels = _expected(whole, order)
        assert torch.equal(split.images, images) and torch.equal(split.labels, labels)
        assert split.classes == sub.classes and split.images.is_contiguous()
    # 60 and 30 images over 5 classes: 12 and 6 of each class are kept.
    assert len(sub.train) == 12 * len(order) and len(sub.test) == 6 * len(order)
    assert sorted(set(sub.train.labels.tolist())) == list(range(len(order)))


def test_order_given_is_the_label_order():
    a = open_dataset(SYNTH, classes="class1,class2")
    b = open_dataset(SYNTH, classes="class2,class1")
    assert torch.equal(a.train.images, b.train.images)  # the same examples, in file order
    assert torch.equal(a.train.labels, 1 - b.train.labels)  # with the two labels swapped
    assert a.classes == ["class1", "class2"] and b.classes == ["class2", "class1"]


def test_empty_spec_is_every_class_and_the_same_source():
    full = open_dataset(SYNTH)
    assert select_classes(full, "") is full and select_classes(full, "  ") is full
    assert open_dataset(SYNTH, classes="").classes == [f"class{i}" for i in range(5)]


def _png_folder(root: Path, classes: tuple[str, ...], per_class: tuple[int, int], size: tuple[int, int]):
    """train/ and test/ of random PNGs; {split: [(pixels 3 x H x W, class name), ...]} in file order."""
    rng = np.random.default_rng(7)
    written = {}
    for split, count in zip(("train", "test"), per_class):
        written[split] = []
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:02d}.png")
                written[split].append((pixels.transpose(2, 0, 1), cls))
    return written


def test_image_folder_arrays_keep_the_named_pixels(tmp_path):
    written = _png_folder(tmp_path / "imgs", ("ant", "bee", "cat", "dog"), (3, 2), (8, 8))
    sub = open_dataset(str(tmp_path / "imgs"), cache_dir=str(tmp_path / "cache"), classes="dog,1")
    assert sub.kind == "array" and sub.classes == ["dog", "bee"]
    for split in ("train", "test"):
        kept = [(x, ["dog", "bee"].index(c)) for x, c in written[split] if c in ("dog", "bee")]
        got = getattr(sub, split)
        np.testing.assert_array_equal(got.images.numpy(), np.stack([x for x, _ in kept]))
        assert got.labels.tolist() == [y for _, y in kept]  # bee's images come first, labelled 1
    assert sub.train.labels.tolist() == [1, 1, 1, 0, 0, 0]
    # Every subset shares the one cache entry of the whole folder.
    open_dataset(str(tmp_path / "imgs"), cache_dir=str(tmp_path / "cache"), classes="ant,cat")
    assert len(list((tmp_path / "cache" / "imagefolder").iterdir())) == 1


def test_streamed_folder_keeps_the_named_paths(tmp_path):
    root = tmp_path / "imgs"
    _png_folder(root, ("ant", "bee", "cat"), (4, 2), (40, 36))
    full = open_dataset(str(root), stream=True, crop_size=32)
    sub = open_dataset(str(root), stream=True, crop_size=32, classes="cat,ant")
    assert isinstance(sub.train, FolderSplit) and sub.classes == ["cat", "ant"] == sub.train.classes
    assert sub.train.paths.tolist() == [p for p in full.train.paths.tolist() if b"/cat/" in p or b"/ant/" in p]
    assert sub.train.labels.tolist() == [1] * 4 + [0] * 4 and sub.test.labels.tolist() == [1] * 2 + [0] * 2
    assert (sub.train.crop_size, sub.train.resize_size) == (full.train.crop_size, full.train.resize_size)
    assert [sub.test.path(i) for i in range(4)] == [root / f"test/{c}/{i:02d}.png" for c in ("ant", "cat")
                                                    for i in range(2)]
    # The batches: those files' eval crops, with the new labels (cat 0, ant 1).
    batches = make_batches(sub.test, batch_size=4, train=False, seed=0, device="cpu", augment="none",
                           normalize="none", channels_last=False)
    (x, y), = list(batches.batches(0))
    assert y.tolist() == [1, 1, 0, 0]
    ant = full.test.load(full.test.paths.tolist().index(b"test/ant/00.png"), None)
    assert torch.equal((x[0] * 255).round().to(torch.uint8), ant)
    assert torch.equal((x * 255).round().to(torch.uint8), torch.stack([sub.test.load(i, None) for i in range(4)]))


@pytest.mark.parametrize("spec,match", [
    ("class1,zebra", r"unknown class 'zebra'; valid names: class0, class1, class2, class3, class4 \(or indices 0-4\)"),
    ("clas2,class1", r"unknown class 'clas2' \(did you mean class2"),
    ("0,5", r"index 5 is out of range for 5 classes; valid names: class0"),
    ("-1,2", r"index -1 is out of range"),
    ("class2,2", r"names class 'class2' \(index 2\) twice"),
    ("class2", r"keeps 1 class; a classifier needs at least 2; valid names: class0"),
    ("class1,,class2", r"has an empty item"),
])
def test_bad_specs_name_the_problem_and_the_valid_names(spec, match):
    with pytest.raises(DataError, match=match):
        open_dataset(SYNTH, classes=spec)


def test_a_name_wins_over_an_index_and_long_lists_are_cut():
    assert parse_classes("1,0", ["1", "0", "2"]) == [0, 1]  # folder classes named by numbers
    many = [f"n{i:04d}" for i in range(1000)]
    with pytest.raises(DataError, match=r"n0029 and 970 more \(or indices 0-999\)$"):
        parse_classes("n0001,zzz", many)


def test_a_split_without_any_named_class_is_refused(tmp_path):
    root = tmp_path / "imgs"
    _png_folder(root, ("ant", "bee", "cat"), (2, 1), (8, 8))
    for f in (root / "test" / "cat").iterdir():
        f.unlink()
    for f in (root / "test" / "bee").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"the test split has no examples of bee, cat"):
        open_dataset(str(root), cache_dir=str(tmp_path / "cache"), classes="bee,cat")
