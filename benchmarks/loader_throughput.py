#!/usr/bin/env python3
"""Images/s of bnonly's streamed-folder pipeline (ImageNet-style folders) per DataLoader worker.

Builds a synthetic ImageNet-like folder in a temporary directory (no network): JPEGs at quality 90
in the common ImageNet sizes (mostly 500x375 and 375x500), whose content is a random colour field
plus grain, tuned so that they compress to about ImageNet's mean file size (~110 KB: 138 GB for
1.28 M training images); pure noise would compress far worse and decode slower than photographs.
Then it streams the folder through bnonly's own pipeline, ``bnonly.data.open_dataset(path,
stream=True)`` + ``bnonly.data.make_batches(..., num_workers=N)``:
decode + the paper's train transforms (RandomResizedCrop 224, scale 0.1-1, ratio 0.8-1.25, flip)
for the train split, decode + resize 256 + center crop 224 for the test split, each for N workers.

    nice -n 10 python benchmarks/loader_throughput.py                 # N = 0, 1, 2; JSON to stdout
    nice -n 10 python benchmarks/loader_throughput.py --out benchmarks/results/loader_cpu_2core.json

Wall-clock images/s depends on what else the machine runs, so the CPU seconds the pipeline used
are measured too (the main process's, plus the workers', read from getrusage once they have been
joined): images per CPU-second is what one fully available core delivers, the number to size a
job with. One epoch per setting; its time includes starting the workers (``first_batch_s``).
The main process runs torch at ``--threads`` (default 1, as a DataLoader worker always does): on
a loaded machine a 2-thread main process spent ~13 ms per image waking OpenMP threads for the
one small uint8 permute copy of each image (``to_chw_uint8``), against ~0.15 ms at one thread.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, features

# (width, height) and how often: the two 4:3 orientations dominate ImageNet's train set.
SIZES = (((500, 375), 0.5), ((375, 500), 0.2), ((500, 333), 0.15), ((500, 500), 0.1), ((640, 480), 0.05))


def make_image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A photograph-like random image: a bicubically upsampled 48x36 colour field plus grain
    (sigma 18: about 104 KB at 500x375, quality 90)."""
    w, h = size
    field = Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(field, dtype=np.int16) + rng.normal(0, 18, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def build_folder(root: Path, n_train: int, n_test: int, classes: int, seed: int) -> dict:
    """ROOT/{train,val}/<class>/*.jpg; returns counts, mean file size and the sizes used."""
    rng = np.random.default_rng(seed)
    sizes, weights = zip(*SIZES)
    total_bytes, count = 0, 0
    for split, n in (("train", n_train), ("val", n_test)):
        for i in range(n):
            folder = root / split / f"class_{i % classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            size = sizes[rng.choice(len(sizes), p=weights)]
            path = folder / f"img_{i:05d}.JPEG"
            make_image(rng, size).save(path, quality=90)
            total_bytes += path.stat().st_size
            count += 1
    return dict(train_images=n_train, test_images=n_test, classes=classes, jpeg_quality=90,
                mean_file_kb=round(total_bytes / count / 1024, 1), sizes=[[list(s), p] for s, p in SIZES])


def cpu_seconds() -> tuple[float, float]:
    """(this process, its joined children) user+system CPU seconds."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def measure(split, *, train: bool, workers: int, batch_size: int) -> dict:
    """One epoch of ``split`` through make_batches on the CPU; wall and CPU time."""
    from bnonly.data import make_batches

    gc.collect()
    own0, kids0 = cpu_seconds()
    start = time.perf_counter()
    source = make_batches(split, batch_size=batch_size, train=train, seed=0, device="cpu", augment="auto",
                          normalize="imagenet", channels_last=False, num_workers=workers, drop_last=False)
    images, first = 0, None
    for x, _ in source.batches(0):
        if first is None:
            first = time.perf_counter() - start
            assert x.shape[1:] == (3, 224, 224), x.shape
        images += len(x)
    wall = time.perf_counter() - start
    del source, x  # shuts the persistent workers down and joins them, so getrusage counts them
    gc.collect()
    own1, kids1 = cpu_seconds()
    main_cpu, worker_cpu = own1 - own0, kids1 - kids0
    return dict(split="train" if train else "test", transform=_TRANSFORMS[train], workers=workers, images=images,
                batch_size=batch_size, wall_s=round(wall, 3), img_per_s=round(images / wall, 1),
                first_batch_s=round(first, 3), main_cpu_s=round(main_cpu, 3), worker_cpu_s=round(worker_cpu, 3),
                img_per_cpu_s=round(images / (main_cpu + worker_cpu), 1),
                img_per_worker_cpu_s=round(images / worker_cpu, 1) if workers else None)


_TRANSFORMS = {True: "decode + RandomResizedCrop(224, scale 0.1-1, ratio 0.8-1.25) + flip",
               False: "decode + resize 256 + center crop 224"}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    import torch

    return dict(cpu=model, cores=len(os.sched_getaffinity(0)), loadavg_before=os.getloadavg()[0],
                python=platform.python_version(), torch=torch.__version__, pillow=Image.__version__,
                libjpeg_turbo=features.check_feature("libjpeg_turbo"), nice=os.nice(0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--workers", default="0,1,2", help="comma-separated DataLoader worker counts")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the main process (default: 1)")
    p.add_argument("--out", default=None, help="write the JSON here (default: stdout only)")
    args = p.parse_args(argv)
    import torch

    from bnonly.data import open_dataset

    torch.set_num_threads(args.threads)
    info = dict(machine=machine(), command=" ".join([os.path.basename(sys.executable)] + sys.argv),
                main_process_torch_threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="bnonly-loader-") as tmp:
        started = time.perf_counter()
        info["dataset"] = build_folder(Path(tmp), args.train_images, args.test_images, args.classes, args.seed)
        info["dataset"]["build_s"] = round(time.perf_counter() - started, 1)
        data = open_dataset(tmp, stream=True)
        assert data.kind == "stream", data.kind
        results = []
        for train, split in ((True, data.train), (False, data.test)):
            for workers in (int(w) for w in args.workers.split(",")):
                row = measure(split, train=train, workers=workers, batch_size=args.batch_size)
                print(f"{row['split']:<5} workers={workers}  {row['img_per_s']:7.1f} img/s wall  "
                      f"{row['img_per_cpu_s']:7.1f} img per CPU-second  (first batch {row['first_batch_s']:.2f} s, "
                      f"main {row['main_cpu_s']:.1f} + workers {row['worker_cpu_s']:.1f} CPU-s)", file=sys.stderr)
                results.append(row)
    info["results"] = results
    info["machine"]["loadavg_after"] = os.getloadavg()[0]
    info["per_core"] = {
        split: dict(img_per_cpu_s_without_workers=next(r["img_per_cpu_s"] for r in results
                                                       if r["split"] == split and r["workers"] == 0),
                    img_per_worker_cpu_s=[r["img_per_worker_cpu_s"] for r in results
                                          if r["split"] == split and r["workers"]])
        for split in ("train", "test")}
    text = json.dumps(info, indent=1)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
