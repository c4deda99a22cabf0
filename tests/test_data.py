"""bnonly.data: every format round-trips, errors explain themselves, batches are exact and resumable."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bnonly.data as data
from bnonly import host
from bnonly.data import ArrayDataset, DataError, make_batches, open_dataset
from bnonly.data import batches as batches_mod
from bnonly.data import cifar as cifar_mod
from bnonly.data import folder as folder_mod
from bnonly.data import stream as stream_mod
from bnonly.data.batches import NORMALIZATIONS, ShardPlan

SHARED_CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


# ---------------------------------------------------------------- builders of tiny datasets

def _write_cifar(root: Path, layout, per_file: int, seed: int, protocol: int) -> dict[str, np.ndarray]:
    """A python-batch folder of ``layout`` with ``per_file`` random images per batch file."""
    rng = np.random.default_rng(seed)
    folder = root / layout.folder
    folder.mkdir(parents=True)
    names = [f"name{i}" for i in range(layout.num_classes)]
    meta = {layout.names_key.encode(): [n.encode() for n in names], b"num_vis": 3072}
    (folder / layout.meta_file).write_bytes(pickle.dumps(meta, protocol=protocol))
    out: dict[str, list[np.ndarray]] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for split, files in (("train", layout.train_files), ("test", (layout.test_file,))):
        for f in files:
            x = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            y = rng.integers(0, layout.num_classes, per_file)
            batch = {b"data": x, layout.label_key.encode(): y.tolist(), b"batch_label": f.encode()}
            (folder / f).write_bytes(pickle.dumps(batch, protocol=protocol))
            out[f"{split}_x"].append(x.reshape(-1, 3, 32, 32))
            out[f"{split}_y"].append(y)
    result = {k: np.concatenate(v) for k, v in out.items()}
    result["classes"] = names
    return result


def _tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def _write_png_folder(root: Path, classes=("cat", "dog", "emu"), per_class=(4, 2), size=(8, 8), seed=0):
    """train/ and test/ folders of random PNGs; returns the pixels as uint8 N x 3 x H x W per split."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, count in zip(("train", "test"), per_class):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                w, h = size if isinstance(size, tuple) else size(rng)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:03d}.png")
                xs.append(pixels.transpose(2, 0, 1))
                ys.append(label)
        out[split] = (xs, np.array(ys))
    return out


def _assert_split(split: ArrayDataset, x: np.ndarray, y: np.ndarray, classes) -> None:
    assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
    assert split.labels.dtype == torch.int64
    np.testing.assert_array_equal(split.images.numpy(), x)
    np.testing.assert_array_equal(split.labels.numpy(), y)
    assert split.classes == list(classes)


# ---------------------------------------------------------------- CIFAR python batches

@pytest.mark.parametrize("layout,protocol", [(cifar_mod.CIFAR10, 2), (cifar_mod.CIFAR100, 4)])
def test_cifar_folder_round_trip(tmp_path, layout, protocol):
    want = _write_cifar(tmp_path, layout, per_file=3, seed=1, protocol=protocol)
    for path in (tmp_path / layout.folder, tmp_path):  # the folder itself or its parent
        src = open_dataset(str(path))
        assert (src.name, src.kind, src.num_classes, src.image_size) == (layout.name, "array", layout.num_classes, 32)
        _assert_split(src.train, want["train_x"], want["train_y"], want["classes"])
        _assert_split(src.test, want["test_x"], want["test_y"], want["classes"])
    assert len(src.train) == 3 * len(layout.train_files)


@pytest.mark.parametrize("layout", [cifar_mod.CIFAR10, cifar_mod.CIFAR100])
def test_cifar_archive_round_trip_and_md5(tmp_path, monkeypatch, layout):
    want = _write_cifar(tmp_path / "src", layout, per_file=2, seed=2, protocol=2)
    archive = _tar(tmp_path / "src" / layout.folder, tmp_path / "my-copy.tar.gz")  # unofficial name: no md5
    src = open_dataset(str(archive))
    assert src.name == layout.name
    _assert_split(src.train, want["train_x"], want["train_y"], want["classes"])
    _assert_split(src.test, want["test_x"], want["test_y"], want["classes"])

    official = tmp_path / "data" / layout.archive
    official.parent.mkdir()
    official.write_bytes(archive.read_bytes())
    with pytest.raises(DataError, match="md5") as err:
        open_dataset(str(official.parent))  # found inside the folder, then checked
    assert "corrupt or incomplete" in str(err.value) and "cs.toronto.edu" in str(err.value)

    monkeypatch.setitem(cifar_mod.ARCHIVE_MD5, layout.archive, hashlib.md5(archive.read_bytes()).hexdigest())
    _assert_split(open_dataset(str(official)).test, want["test_x"], want["test_y"], want["classes"])
    assert sorted(p.name for p in official.parent.iterdir()) == [layout.archive]  # nothing extracted


def test_cifar_malformed_and_incomplete(tmp_path):
    _write_cifar(tmp_path, cifar_mod.CIFAR10, per_file=2, seed=3, protocol=2)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="N x 3072"):
        open_dataset(str(folder))
    (folder / "data_batch_3").write_bytes(pickle.dumps(os.system))  # a code-running pickle is refused
    with pytest.raises(DataError, match="refusing"):
        open_dataset(str(folder))
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="lacks test_batch"):
        open_dataset(str(folder))
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(_tar(folder, tmp_path / "whole.tar.gz").read_bytes()[:300])
    with pytest.raises(DataError, match="corrupt or incomplete"):
        open_dataset(str(truncated))


# ---------------------------------------------------------------- image folders and the cache

def test_image_folder_decode_and_cache(tmp_path, monkeypatch):
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    want = _write_png_folder(root)
    src = open_dataset(str(root), cache_dir=str(cache))
    assert (src.name, src.kind, src.classes, src.image_size) == ("imagefolder", "array", ["cat", "dog", "emu"], 8)
    for split in ("train", "test"):
        xs, ys = want[split]
        _assert_split(getattr(src, split), np.stack(xs), ys, ["cat", "dog", "emu"])
    entries = list((cache / "imagefolder").iterdir())
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file()
    assert not any(p.suffix in (".npy", ".json", ".tmp") for p in root.rglob("*"))  # data folder untouched

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache was valid")

    with monkeypatch.context() as m:
        m.setattr(folder_mod, "decode_images", no_decoding)
        again = open_dataset(str(root), cache_dir=str(cache))
    assert torch.equal(again.train.images, src.train.images) and torch.equal(again.test.labels, src.test.labels)

    Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(root / "train" / "dog" / "new.png")
    grown = open_dataset(str(root), cache_dir=str(cache))
    assert len(grown.train) == len(src.train) + 1
    assert (grown.train.images[grown.train.labels == 1] == 7).flatten(1).all(1).sum() == 1
    assert len(list((cache / "imagefolder").iterdir())) == 1  # the stale entry was replaced


def test_image_folder_cache_location(tmp_path, monkeypatch):
    root = tmp_path / "imgs"
    _write_png_folder(root, per_class=(1, 1))
    (root / "val").mkdir()  # test/ wins over val/
    monkeypatch.setenv("BNONLY_CACHE", str(tmp_path / "env-cache"))
    assert len(open_dataset(str(root)).test) == 3
    assert (tmp_path / "env-cache" / "imagefolder").is_dir()
    with pytest.raises(DataError, match="inside the data folder"):
        open_dataset(str(root), cache_dir=str(root / "cache"))


def test_image_folder_named_cifar10_and_val_split(tmp_path):
    root = tmp_path / "imgs"
    _write_png_folder(root, classes=cifar_mod.CIFAR10_CLASSES, per_class=(1, 1), size=(32, 32))
    (root / "test").rename(root / "val")
    src = open_dataset(str(root), cache_dir=str(tmp_path / "cache"))
    assert (src.name, src.num_classes, len(src.test)) == ("cifar10", 10, 10)


@pytest.mark.parametrize(
    "setup,match",
    [
        (lambda p: p / "nope", "does not exist"),
        (lambda p: p, "an empty folder"),
        (lambda p: (p / "train" / "a").mkdir(parents=True) or p, "test/ \\(or val/\\)"),
        (lambda p: [(p / s / "a").mkdir(parents=True) for s in ("train", "test")] and p, "holds no images"),
        (lambda p: (p / "notes.txt").write_text("hi") and p / "notes.txt", "not a .tar.gz"),
    ],
    ids=["missing", "empty", "no-test", "no-images", "stray-file"],
)
def test_missing_or_malformed_data_errors(tmp_path, setup, match):
    path = setup(tmp_path)
    with pytest.raises(DataError, match=match) as err:
        open_dataset(str(path), cache_dir=str(tmp_path / "c"))
    assert isinstance(err.value, ValueError)
    if match in ("does not exist", "an empty folder"):
        assert "cifar-10-python.tar.gz" in str(err.value) and "train/ and test/" in str(err.value)


def test_both_cifars_is_ambiguous(tmp_path):
    _write_cifar(tmp_path, cifar_mod.CIFAR10, 1, 0, 2)
    _write_cifar(tmp_path, cifar_mod.CIFAR100, 1, 0, 2)
    with pytest.raises(DataError, match="both CIFAR-10 and CIFAR-100"):
        open_dataset(str(tmp_path))


def test_formats_are_tried_in_registration_order(tmp_path, monkeypatch):
    """Images first, then an extracted CIFAR folder, then a CIFAR archive: what a mixed folder opens as."""
    assert data.DATA_FORMATS.names() == ["synthetic", "imagefolder", "cifar-folder", "cifar-archive"]
    _write_cifar(tmp_path / "build", cifar_mod.CIFAR100, per_file=2, seed=0, protocol=2)
    archive = _tar(tmp_path / "build" / "cifar-100-python", tmp_path / "build" / "cifar-100-python.tar.gz")
    monkeypatch.setitem(cifar_mod.ARCHIVE_MD5, archive.name, hashlib.md5(archive.read_bytes()).hexdigest())
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / archive.name).write_bytes(archive.read_bytes())
    assert (open_dataset(str(mixed)).name, open_dataset(str(mixed)).path) == ("cifar100", str(mixed / archive.name))
    _write_cifar(mixed, cifar_mod.CIFAR10, per_file=1, seed=1, protocol=2)
    src = open_dataset(str(mixed))
    assert (src.name, src.path) == ("cifar10", str(mixed / "cifar-10-batches-py"))
    _write_png_folder(mixed, per_class=(1, 1))
    assert open_dataset(str(mixed), cache_dir=str(tmp_path / "c")).name == "imagefolder"
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(str(tmp_path / "cifar-10-batches-py"))  # named like one, but not there


def test_a_registered_format_is_tried_after_the_built_in_ones(tmp_path):
    def open_flat(path, options):
        raw = np.load(data.local_path(path) / "flat.npy")
        split = ArrayDataset(torch.from_numpy(raw), torch.zeros(len(raw), dtype=torch.int64), ["only"])
        return data.array_source("flat", split, split, path)

    data.DATA_FORMATS.register("flat", open_flat, detect=lambda path: (data.local_path(path) / "flat.npy").is_file())
    try:
        np.save(tmp_path / "flat.npy", np.zeros((3, 3, 4, 4), np.uint8))
        src = open_dataset(str(tmp_path))
        assert (src.name, src.num_classes, len(src.train), src.image_size) == ("flat", 1, 3, 4)
    finally:
        data.DATA_FORMATS.unregister("flat")
    with pytest.raises(DataError, match="no dataset found.*flat.npy"):
        open_dataset(str(tmp_path))


# ---------------------------------------------------------------- synthetic

def test_synthetic_deterministic_and_learnable():
    a = open_dataset("synthetic:train=300,test=200,classes=5,size=16,seed=3")
    b = open_dataset("synthetic:train=300,test=200,classes=5,size=16,seed=3")
    c = open_dataset("synthetic:train=300,test=200,classes=5,size=16,seed=4")
    assert (a.name, a.kind, a.num_classes, a.image_size) == ("synthetic", "array", 5, 16)
    assert (len(a.train), len(a.test)) == (300, 200)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert torch.bincount(a.train.labels).tolist() == [60] * 5
    # nearest class mean (a minimal learner) is far above the 20% chance
    x = a.train.images.flatten(1).float()
    means = torch.stack([x[a.train.labels == k].mean(0) for k in range(5)])
    pred = torch.cdist(a.test.images.flatten(1).float(), means).argmin(1)
    assert (pred == a.test.labels).float().mean() > 0.6
    d = open_dataset("synthetic")
    assert (len(d.train), len(d.test), d.num_classes, d.image_size) == (512, 256, 10, 32)
    with pytest.raises(DataError, match="train, test, classes, size, seed"):
        open_dataset("synthetic:epochs=3")


# ---------------------------------------------------------------- device batches

def _array(n=40, size=12, seed=0) -> ArrayDataset:
    """Random images whose label is their index, so a batch's labels say which examples it holds."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(n), [str(i) for i in range(n)])


def _batches(split, **kw):
    opts = dict(batch_size=8, train=True, seed=5, device="cpu", augment="cifar", normalize="none", channels_last=False)
    opts.update(kw)
    return make_batches(split, **opts)


def _collect(source, epoch, start=0):
    return list(source.batches(epoch, start))


@pytest.mark.parametrize("height, width", [(12, 12), (9, 14)])
def test_crop_flip_matches_per_image_reference(height, width):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, height, width), generator=g, dtype=torch.uint8)
    split = ArrayDataset(images, torch.arange(40), [str(i) for i in range(40)])
    src = _batches(split, channels_last=True)
    order, offsets, flips = src.epoch_draws(3)
    got = torch.cat([x for x, _ in src.batches(3)])
    assert got.is_contiguous(memory_format=torch.channels_last)
    pixels = (got * 255).round().to(torch.uint8).numpy()
    for pos in range(len(got)):
        img = np.pad(split.images[order[pos]].numpy(), ((0, 0), (4, 4), (4, 4)))  # zero padding
        r, c = offsets[pos].tolist()
        ref = img[:, r:r + height, c:c + width]
        if flips[pos]:
            ref = ref[:, :, ::-1]
        np.testing.assert_array_equal(pixels[pos], ref)
    plain = torch.cat([x for x, _ in _batches(split).batches(3)])
    assert torch.equal(plain, got)  # memory format changes layout, not values


def test_augmentation_statistics_and_no_augment():
    split = _array(n=4000, size=4)
    _, offsets, flips = _batches(split, batch_size=100).epoch_draws(0)
    assert 0.46 < flips.float().mean() < 0.54
    assert set(offsets.flatten().tolist()) == set(range(9))
    x, _ = next(_batches(split, augment="none", batch_size=100).batches(0))
    order, off, fl = _batches(split, augment="none", batch_size=100).epoch_draws(0)
    assert off is None and fl is None
    assert torch.equal((x * 255).round().to(torch.uint8), split.images[order[:100]])


def test_same_seed_same_batches_and_epochs_differ():
    split = _array()
    a, b = _collect(_batches(split), 1), _collect(_batches(split), 1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    other = _collect(_batches(split), 2)
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in other]))
    assert not torch.equal(a[0][0], _collect(_batches(split, seed=6), 1)[0][0])
    assert len(a) == 5 and all(x.shape == (8, 3, 12, 12) for x, _ in a)


def test_resume_mid_epoch_equals_tail():
    src = _batches(_array(n=50))  # 6 full batches, 2 examples dropped
    assert src.num_batches() == 6 and src.num_examples == 48
    full = _collect(src, 4)
    for start in (0, 1, 5, 6):
        tail = _collect(src, 4, start)
        assert len(tail) == 6 - start
        assert all(torch.equal(x, fx) and torch.equal(y, fy) for (x, y), (fx, fy) in zip(tail, full[start:]))
    with pytest.raises(ValueError):
        _collect(src, 4, 7)


@pytest.mark.parametrize("train,n", [(True, 50), (False, 45)])
def test_rank_shards_concatenate_to_single_process(train, n):
    split = _array(n=n)
    single = _collect(_batches(split, train=train), 2)
    shards = [_batches(split, train=train, rank=r, world_size=4) for r in range(4)]
    per_rank = [_collect(s, 2) for s in shards]
    assert all(len(p) == len(single) for p in per_rank)
    for b, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([p[b][0] for p in per_rank]), x)
        assert torch.equal(torch.cat([p[b][1] for p in per_rank]), y)
    seen = torch.cat([y for p in per_rank for _, y in p])
    assert len(set(seen.tolist())) == len(seen)  # disjoint: labels are example indices
    assert sum(s.num_examples for s in shards) == (48 if train else 45)
    if train:
        assert len({s.num_examples for s in shards}) == 1


def test_rank_shards_are_disjoint_and_cover_the_epoch():
    plan_sizes = []
    for rank in range(3):
        plan = ShardPlan(n=20, batch_size=6, drop_last=False, rank=rank, world_size=3)
        positions = [p for b in range(plan.num_batches()) for p in range(*plan.positions(b))]
        assert len(positions) == plan.num_examples
        plan_sizes.append(positions)
    assert sorted(p for ps in plan_sizes for p in ps) == list(range(20))
    with pytest.raises(ValueError, match="divide evenly"):
        ShardPlan(n=20, batch_size=8, drop_last=True, rank=0, world_size=3)


def test_eval_batches_fixed_order_no_augmentation_keep_all():
    split = _array(n=21)
    src = _batches(split, train=False, batch_size=8)  # augment="cifar" is ignored for evaluation
    got = _collect(src, 0)
    assert [len(y) for _, y in got] == [8, 8, 5] and src.num_examples == 21
    x = torch.cat([x for x, _ in got])
    assert torch.equal((x * 255).round().to(torch.uint8), split.images)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(got, _collect(src, 7)))


@pytest.mark.parametrize("name", ["imagenet", "cifar"])
def test_normalization_values(name):
    images = torch.tensor([0, 255, 128, 1], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    split = ArrayDataset(images, torch.zeros(4, dtype=torch.int64), ["a"])
    x, _ = next(_batches(split, train=False, batch_size=4, normalize=name).batches(0))
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in NORMALIZATIONS[name])
    want = (images.double() / 255 - mean) / std
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.double(), want, atol=1e-6, rtol=0)
    bf = next(_batches(split, train=False, batch_size=4, normalize=name, dtype=torch.bfloat16).batches(0))[0]
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, x.to(torch.bfloat16))


def test_unknown_choices_list_valid_ones():
    with pytest.raises(ValueError, match="imagenet, cifar, none"):
        _batches(_array(), normalize="zca")
    with pytest.raises(ValueError, match="auto, cifar, none"):
        _batches(_array(), augment="autoaugment")
    with pytest.raises(ValueError, match="fewer than one batch"):
        _batches(_array(n=5))


# ---------------------------------------------------------------- streaming folders

def _variable_size(rng):
    return int(rng.integers(40, 56)), int(rng.integers(40, 56))


@pytest.fixture(scope="module")
def stream_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    _write_png_folder(root, classes=("a", "b"), per_class=(6, 3), size=_variable_size, seed=4)
    src = open_dataset(str(root), crop_size=32, resize_size=36)
    assert src.kind == "stream" and src.image_size == 32 and src.num_classes == 2
    return src


def test_stream_batches_deterministic_across_workers(stream_source):
    def run(workers, epoch, start=0):
        src = make_batches(stream_source.train, batch_size=4, train=True, seed=1, device="cpu", augment="auto",
                           normalize="imagenet", channels_last=True, num_workers=workers)
        return src, _collect(src, epoch, start)

    src, serial = run(0, 0)
    assert src.num_batches() == 3 and src.num_examples == 12
    assert all(x.shape == (4, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last) for x, _ in serial)
    _, parallel = run(2, 0)
    _, again = run(0, 0)
    _, resumed = run(2, 0, start=1)
    _, later = run(0, 1)
    for other in (parallel, again):
        assert all(torch.equal(x, ox) and torch.equal(y, oy) for (x, y), (ox, oy) in zip(serial, other))
    assert all(torch.equal(x, ox) for (x, _), (ox, _) in zip(serial[1:], resumed)) and len(resumed) == 2
    assert not torch.equal(serial[0][0], later[0][0])
    assert sorted(torch.cat([y for _, y in serial]).tolist()) == [0] * 6 + [1] * 6


def test_stream_eval_is_resize_then_center_crop(stream_source):
    split = stream_source.test
    src = make_batches(split, batch_size=4, train=False, seed=0, device="cpu", augment="auto",
                       normalize="none", channels_last=False)
    got = torch.cat([x for x, _ in src.batches(0)])
    assert got.shape == (6, 3, 32, 32) and src.num_batches() == 2
    for i in range(len(split)):
        img = Image.open(split.path(i)).convert("RGB")
        w, h = img.size
        size = (36, int(36 * h / w)) if w <= h else (int(36 * w / h), 36)
        ref = img.resize(size, Image.BILINEAR)
        left, top = round((size[0] - 32) / 2), round((size[1] - 32) / 2)
        ref = np.asarray(ref.crop((left, top, left + 32, top + 32))).transpose(2, 0, 1)
        np.testing.assert_array_equal((got[i] * 255).round().to(torch.uint8).numpy(), ref)


def test_random_resized_crop_box_in_range():
    rng = np.random.default_rng(0)
    for _ in range(500):
        w, h = int(rng.integers(20, 300)), int(rng.integers(20, 300))
        left, top, cw, ch = stream_mod.random_resized_crop_box(w, h, (0.1, 1.0), (0.8, 1.25), rng)
        assert 0 <= left and left + cw <= w and 0 <= top and top + ch <= h and cw > 0 and ch > 0
    a = stream_mod.random_resized_crop_box(100, 80, (0.1, 1.0), (0.8, 1.25), batches_mod.item_rng(1, 2, 3))
    assert a == stream_mod.random_resized_crop_box(100, 80, (0.1, 1.0), (0.8, 1.25), batches_mod.item_rng(1, 2, 3))
    assert stream_mod.random_resized_crop_box(1000, 10, (0.9, 1.0), (0.8, 1.25), rng) == (494, 0, 12, 10)


def test_stream_forced_for_small_same_size_images(tmp_path):
    _write_png_folder(tmp_path / "imgs", per_class=(2, 1), size=(48, 48))
    src = open_dataset(str(tmp_path / "imgs"), stream=True, crop_size=32)
    assert src.kind == "stream" and isinstance(src.train, data.FolderSplit) and src.train.resize_size == 37
    arrays = open_dataset(str(tmp_path / "imgs"), cache_dir=str(tmp_path / "c"))
    assert arrays.kind == "array" and arrays.image_size == 48


def test_unsampled_odd_size_image_falls_back_to_streaming(tmp_path, monkeypatch):
    _write_png_folder(tmp_path / "imgs", per_class=(2, 1), size=(8, 8))
    Image.new("RGB", (20, 12)).save(tmp_path / "imgs" / "test" / "emu" / "zzz.png")
    monkeypatch.setattr(folder_mod, "_PROBE_COUNT", 1)  # the header probe sees only the first image
    src = open_dataset(str(tmp_path / "imgs"), cache_dir=str(tmp_path / "c"), crop_size=8)
    assert src.kind == "stream" and len(src.test) == 4
    with pytest.raises(DataError, match="differ in size"):
        open_dataset(str(tmp_path / "imgs"), cache_dir=str(tmp_path / "c"), stream=False)


# ---------------------------------------------------------------- the real shared CIFAR-10 JPEGs

@pytest.mark.slow
def test_shared_cifar10_jpeg_decodes_and_caches(tmp_path):
    if not SHARED_CIFAR_JPEG.is_dir():
        pytest.skip(f"shared CIFAR-10 JPEG folder not found at {SHARED_CIFAR_JPEG}")
    t0 = time.perf_counter()
    src = open_dataset(str(SHARED_CIFAR_JPEG), cache_dir=str(tmp_path))
    decode_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached = open_dataset(str(SHARED_CIFAR_JPEG), cache_dir=str(tmp_path))
    load_s = time.perf_counter() - t0
    print(f"\ndecoded 60,000 JPEGs in {decode_s:.1f} s; cached load {load_s:.2f} s")
    assert (src.name, src.kind, src.image_size) == ("cifar10", "array", 32)
    assert src.train.images.shape == (50000, 3, 32, 32) and src.test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(src.train.labels).tolist() == [5000] * 10
    assert torch.bincount(src.test.labels).tolist() == [1000] * 10
    first = np.asarray(Image.open(SHARED_CIFAR_JPEG / "test" / "airplane" / "0000.jpg").convert("RGB"))
    np.testing.assert_array_equal(src.test.images[0].permute(1, 2, 0).numpy(), first)
    assert torch.equal(cached.train.images, src.train.images)
    # Generous bounds (a loaded 2-core AVX2 machine took 65 s): they catch a decode path gone pathological.
    assert decode_s < 300 and load_s < 30


def test_stream_workers_are_capped_at_the_usable_cores(tmp_path, monkeypatch):
    """num_workers=4 on a 2-core machine starts 2 workers (torch warns above the cores), and the
    batches are the same whatever the count: each item is seeded by its index."""
    _write_png_folder(tmp_path / "imgs", per_class=(4, 2), size=(48, 48))
    src = open_dataset(str(tmp_path / "imgs"), stream=True, crop_size=32)
    monkeypatch.setattr(host.os, "sched_getaffinity", lambda pid: {0, 1})

    def epoch(workers):
        b = make_batches(src.train, batch_size=4, train=True, augment="auto", normalize="none", seed=3,
                         device="cpu", channels_last=False, num_workers=workers)
        return b.loader.num_workers, [x for x, _ in b.batches(0)]

    capped, four = epoch(4)
    none, zero = epoch(0)
    assert (capped, none) == (2, 0)
    assert all(torch.equal(a, b) for a, b in zip(four, zero)) and len(four) == len(zero) > 0
