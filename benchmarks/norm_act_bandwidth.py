#!/usr/bin/env python3
"""How close the fused norm-act kernel (``bnonly.fused_norm``) runs to this machine's memory bandwidth.

Issue 20 asks whether the memory-bound part of the CPU step can shrink further. The kernel already
makes the passes its docstring lists; if each pass runs at the speed of a plain copy, the only way
to go faster is fewer bytes (fewer passes or a narrower dtype), not better code. This times, in one
process and interleaved over ``--rounds``, on one activation shape:

- ``copy``: ``out.copy_(x)``, the reference: one read and one write of the tensor per call;
- the kernel's forward without and with a residual (3 and 4 tensor-sized passes: x for the
  statistics, x (+ residual) and y), and its backward without and with one (5 and 7: dy and x,
  then dy, x and dx; with a residual dy, x and y with g written, then g, x and dx);

and reports each as GB/s of those minimal bytes and as a share of the copy's GB/s:

    python benchmarks/norm_act_bandwidth.py                       # bf16, channels_last, 128x16x32x32
    python benchmarks/norm_act_bandwidth.py --dtype float32 --threads 1 --json results.jsonl

The default shape is the first stage of the CIFAR ResNets at batch 128 (the largest activations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

from bnonly import fused_norm
from bnonly.host import usable_cores

#: Tensor-sized passes each case makes (reads + writes), as csrc/norm_act.cpp's header lists them.
PASSES = {"copy": 2, "forward": 3, "forward+residual": 4, "backward": 5, "backward+residual": 7}


def _timed(fn, reps: int) -> float:
    fn()  # warm: first-touch pages, thread pool
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def measure(shape: tuple[int, ...], dtype: torch.dtype, threads: int, reps: int, rounds: int) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    if fused_norm.unavailable_reason():
        sys.exit(f"the fused kernel is not available here: {fused_norm.unavailable_reason()}")
    x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
    norm, act = nn.BatchNorm2d(shape[1]), nn.ReLU()
    fused_norm.enable(norm)
    out = torch.empty_like(x)
    xg = x.detach().requires_grad_()

    def backward(res):
        for t in (xg, res, norm.weight, norm.bias):  # no accumulation into old gradients: an extra pass
            if t is not None:
                t.grad = None
        y = fused_norm.norm_act(norm, act, xg, res)
        start = time.perf_counter()
        y.backward(dy)
        return time.perf_counter() - start

    def timed_backward(res) -> float:  # the backward alone: the forward that builds its graph is not counted
        backward(res)
        return statistics.median(backward(res) for _ in range(reps))

    cases = {
        "copy": lambda: _timed(lambda: out.copy_(x), reps),
        "forward": lambda: _timed(lambda: fused_norm.norm_act(norm, act, x), reps),
        "forward+residual": lambda: _timed(lambda: fused_norm.norm_act(norm, act, x, residual), reps),
        "backward": lambda: timed_backward(None),
        "backward+residual": lambda: timed_backward(residual.requires_grad_()),
    }
    seconds: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):  # interleaved, so a load change affects every case alike
        for name, run in cases.items():
            if name.startswith("forward"):
                with torch.no_grad():
                    seconds[name].append(run())
            else:
                seconds[name].append(run())
    tensor_bytes = x.numel() * x.element_size()
    rows = {}
    for name, values in seconds.items():
        s = statistics.median(values)
        rows[name] = {"ms": round(1e3 * s, 3), "passes": PASSES[name],
                      "GB_per_s": round(PASSES[name] * tensor_bytes / s / 1e9, 2)}
    for row in rows.values():
        row["of_copy"] = round(row["GB_per_s"] / rows["copy"]["GB_per_s"], 3)
    return {"shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "threads": threads,
            "tensor_MB": round(tensor_bytes / 1e6, 2), "reps": reps, "rounds": rounds, "cases": rows}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="128,16,32,32", help="N,C,H,W (default: %(default)s)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    p.add_argument("--reps", type=int, default=20, help="calls per timing (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    p.add_argument("--json", default=None, help="append the result as one JSON line here")
    args = p.parse_args(argv)
    try:
        shape = tuple(int(v) for v in args.shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4 or min(shape) < 1:
        p.error(f"--shape {args.shape!r}: expected four positive integers N,C,H,W, e.g. 128,16,32,32")
    result = measure(shape, getattr(torch, args.dtype), args.threads or usable_cores(), args.reps, args.rounds)
    print(f"shape {result['shape']} {result['dtype']} channels_last, {result['threads']} threads, "
          f"{result['tensor_MB']} MB per tensor")
    print(f"{'case':<20}{'ms':>9}{'passes':>8}{'GB/s':>9}{'of copy':>9}")
    for name, row in result["cases"].items():
        print(f"{name:<20}{row['ms']:>9.3f}{row['passes']:>8}{row['GB_per_s']:>9.2f}{row['of_copy']:>9.2f}")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
