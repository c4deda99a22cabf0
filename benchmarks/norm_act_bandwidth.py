#!/usr/bin/env python3
"""How close the fused norm-act kernel (``bnonly.fused_norm``) runs to this machine's memory speed.

Issue 20 asks whether the memory-bound part of the CPU step can shrink further. The kernel makes
the passes its source's header lists; if each pass ran at the speed of a plain copy, going faster
would need fewer bytes (fewer passes or a narrower dtype), not better code. This times, on one
activation shape in the kernel's layout (channels_last):

- ``copy``: ``out.copy_(x)``, one read and one write of the tensor per call: the reference;
- the kernel's forward without and with a residual (3 and 4 tensor-sized passes: x for the
  statistics, then x (+ residual) and y), and its backward alone without and with one (5 and 7:
  dy and x, then dy, x and dx; with a residual dy, x and y with g written, then g, x and dx);

each as GB/s of those minimal bytes and as a share of the copy's GB/s. By default the same tensors
are used call after call, so they stay in the caches as far as they fit; ``--cold`` evicts them
before every timed call (by writing a buffer twice the last-level cache), so every case reads its
inputs from memory, as a training step does with the activations it saved in the forward. The two
together say whether a case is bound by memory (cold near the copy) or by its own loops (warm
far from the copy). ``--against REV`` builds
the kernel source of git revision REV as well and times both in this process, interleaved
round by round, with the new/old speed ratio per case:

    python benchmarks/norm_act_bandwidth.py                       # bf16, 128x16x32x32, all cores
    python benchmarks/norm_act_bandwidth.py --against HEAD~1 --dtype float32 --threads 1 --json r.jsonl
    python benchmarks/norm_act_bandwidth.py --cold                # inputs from memory, not the caches

The default shape is the first stage of the CIFAR ResNets at batch 128 (their largest activations).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from bnonly import fused_norm
from bnonly.host import usable_cores

REPO = Path(__file__).resolve().parent.parent
#: Tensor-sized passes each case makes (reads + writes), as csrc/norm_act.cpp's header lists them.
PASSES = {"copy": 2, "forward": 3, "forward+residual": 4, "backward": 5, "backward+residual": 7}


def last_level_cache_bytes() -> int:
    """The largest CPU cache sysfs lists (32 MiB when it lists none)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=32 * 2**20)


class Evictor:
    """Evicts every cache before a timed call, by writing a buffer twice the last-level cache."""

    def __init__(self):
        self.junk = torch.empty(2 * last_level_cache_bytes(), dtype=torch.uint8)

    def __call__(self) -> None:
        self.junk.add_(1)


def _per_call(fn, reps: int, evict=None) -> float:
    fn()  # warm: first-touch pages, the thread pool
    if evict is None:  # warm caches: back-to-back calls, timed together
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps
    times = []
    for _ in range(reps):  # cold: each call timed alone, after the caches were evicted
        evict()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cases(shape: tuple[int, ...], dtype: torch.dtype, reps: int, evict=None) -> dict:
    """name -> a function timing one call of that case (seconds); ``evict``: called before every
    timed call (``--cold``)."""
    def tensor():
        return torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)

    x, residual, dy, out = tensor(), tensor(), tensor(), torch.empty_like(tensor())
    norm, act = nn.BatchNorm2d(shape[1]), nn.ReLU()
    fused_norm.enable(norm)
    xg, rg = x.detach().requires_grad_(), residual.detach().requires_grad_()

    def one_backward(res) -> float:
        for t in (xg, rg, norm.weight, norm.bias):  # no accumulation into old gradients: an extra pass
            t.grad = None
        y = fused_norm.norm_act(norm, act, xg, res)
        if evict is not None:
            evict()
        start = time.perf_counter()
        y.backward(dy)
        return time.perf_counter() - start

    def backward(res) -> float:  # the backward alone: the forward that builds its graph is not timed
        one_backward(res)
        return statistics.median(one_backward(res) for _ in range(reps))

    def forward(res) -> float:
        with torch.no_grad():
            return _per_call(lambda: fused_norm.norm_act(norm, act, x, res), reps, evict)

    return {"copy": lambda: _per_call(lambda: out.copy_(x), reps, evict),
            "forward": lambda: forward(None), "forward+residual": lambda: forward(residual),
            "backward": lambda: backward(None), "backward+residual": lambda: backward(rg)}


def old_source(rev: str) -> bytes:
    try:
        return subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/bnonly/{fused_norm.SOURCE}"],
                              check=True, capture_output=True).stdout
    except subprocess.CalledProcessError as e:
        sys.exit(f"--against {rev}: git could not read that revision's kernel: {e.stderr.decode().strip()}")


def measure(shape: tuple[int, ...], dtype: torch.dtype, threads: int, reps: int, rounds: int,
            against: str | None = None, cold: bool = False) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    if fused_norm.unavailable_reason():
        sys.exit(f"the fused kernel is not available here: {fused_norm.unavailable_reason()}")
    kernels = {"new": fused_norm.library()} | ({"old": fused_norm.build(old_source(against))} if against else {})
    cases = _cases(shape, dtype, reps, Evictor() if cold else None)
    seconds = {(k, name): [] for k in kernels for name in cases if k == "new" or name != "copy"}
    for _ in range(rounds):  # interleaved, so a change of load slows every case alike
        for (k, name), values in seconds.items():
            with fused_norm.using(kernels[k]):
                values.append(cases[name]())
    tensor_bytes = math.prod(shape) * dtype.itemsize
    copy_gbs = PASSES["copy"] * tensor_bytes / statistics.median(seconds["new", "copy"]) / 1e9
    rows = {}
    for (k, name), values in seconds.items():
        s = statistics.median(values)
        gbs = PASSES[name] * tensor_bytes / s / 1e9
        rows.setdefault(name, {})[k] = {"ms": round(1e3 * s, 3), "GB_per_s": round(gbs, 2),
                                        "of_copy": round(gbs / copy_gbs, 3)}
    for row in rows.values():
        if "old" in row:
            row["new_over_old"] = round(row["old"]["ms"] / row["new"]["ms"], 3)
    return {"shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "threads": threads,
            "tensor_MB": round(tensor_bytes / 1e6, 2), "reps": reps, "rounds": rounds, "against": against,
            "caches": "cold" if cold else "warm",
            "passes": PASSES, "cases": rows}


def append_json_line(path: str | None, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path`` (nothing when it is None): the raw-results
    files under benchmarks/results are such lines, one per invocation."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="128,16,32,32", help="N,C,H,W (default: %(default)s)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    p.add_argument("--reps", type=int, default=20, help="calls per timing (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--against", metavar="REV", default=None,
                   help="also time the kernel source of this git revision, interleaved")
    p.add_argument("--cold", action="store_true",
                   help="evict the caches before every timed call: inputs come from memory")
    p.add_argument("--json", default=None, help="append the result as one JSON line here")
    args = p.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        p.error(f"--shape {args.shape!r}: expected four positive integers N,C,H,W, e.g. 128,16,32,32")
    r = measure(shape, getattr(torch, args.dtype), args.threads or usable_cores(), args.reps, args.rounds,
                args.against, args.cold)
    print(f"shape {r['shape']} {r['dtype']} channels_last, {r['threads']} threads, {r['tensor_MB']} MB a tensor, "
          f"{r['caches']} caches")
    head = f"{'case':<19}{'passes':>7}{'ms':>9}{'GB/s':>9}{'of copy':>9}"
    print(head + (f"  | {'old ms':>8}{'GB/s':>9}{'of copy':>9}{'new/old':>9}" if args.against else ""))
    for name, row in r["cases"].items():
        new = row["new"]
        line = f"{name:<19}{PASSES[name]:>7}{new['ms']:>9.3f}{new['GB_per_s']:>9.2f}{new['of_copy']:>9.2f}"
        if "old" in row:
            old = row["old"]
            line += f"  | {old['ms']:>8.3f}{old['GB_per_s']:>9.2f}{old['of_copy']:>9.2f}{row['new_over_old']:>8.2f}x"
        print(line)
    append_json_line(args.json, r)
    return r


if __name__ == "__main__":
    main()
