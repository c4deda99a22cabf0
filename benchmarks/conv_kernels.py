#!/usr/bin/env python3
"""The CPU convolution kernels a BN-only step could use, on the CIFAR ResNet layer shapes
(3x3, stride 1, batch 128), interleaved and timed in one process: GFLOP/s of each.

    python benchmarks/conv_kernels.py [--threads 1]

- oneDNN forward, NCHW and channels_last (what PyTorch runs);
- oneDNN input gradient (convolution_backward with output mask [True, False, False], what a
  frozen conv's backward runs), and the same gradient as a *forward* conv with the weight
  flipped and transposed once (possible only because the weight never changes);
- im2col + GEMM (PyTorch's slow_conv2d) and NNPACK (Winograd-based), the alternatives.

``--dtype bfloat16`` times the oneDNN kernels in bf16 (what the fast path runs on a bf16 CPU), each
also as a share of the square-``torch.mm`` peak that ``bnonly bench`` divides by, measured in the
same process: on an AMX CPU it says how much of that peak the CIFAR layer shapes reach with hot
caches, what the same convolutions could reach inside a step if their inputs were still cached.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    cl = torch.channels_last
    peak = None
    if dtype == torch.bfloat16:
        from bnonly.bench import matmul_peak
        peak = matmul_peak(torch.device("cpu"), dtype)["flops_per_s"]
        print(f"bfloat16 square torch.mm peak: {peak / 1e9:.1f} GFLOP/s")
    print(f"threads {args.threads}; {args.dtype}; GFLOP/s, median of {args.repeats} interleaved repeats"
          + ("; (% of the mm peak)" if peak else ""))
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        x = torch.randn(128, channels, size, size, dtype=dtype)
        w = torch.randn(channels, channels, 3, 3, dtype=dtype)
        xc, wc = x.contiguous(memory_format=cl), w.contiguous(memory_format=cl)
        flipped = w.flip(2, 3).transpose(0, 1).contiguous(memory_format=cl)
        mask = [True, False, False]
        kernels = {
            "oneDNN fwd NCHW": lambda: F.conv2d(x, w, padding=1),
            "oneDNN fwd channels_last": lambda: F.conv2d(xc, wc, padding=1),
            "oneDNN input-grad (cl)": lambda: torch.ops.aten.convolution_backward(
                xc, xc, wc, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask),
            "fwd with pre-flipped weight (cl)": lambda: F.conv2d(xc, flipped, padding=1),
        }
        if dtype == torch.float32:  # neither alternative has a bf16 kernel
            kernels["im2col+GEMM (slow_conv2d)"] = lambda: torch._C._nn.thnn_conv2d(x, w, 3, None, 1, 1)
            if torch._nnpack_available():
                bias = torch.zeros(channels)
                kernels["NNPACK"] = lambda: torch._nnpack_spatial_convolution(x, w, bias, [1, 1], [1, 1])
        times = {k: [] for k in kernels}
        for f in kernels.values():
            f()
        for _ in range(args.repeats):
            for k, f in kernels.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        flops = 2 * 128 * channels * channels * 9 * size * size
        rates = {k: flops / statistics.median(v) for k, v in times.items()}
        share = {k: f" ({100 * r / peak:.0f}%)" if peak else "" for k, r in rates.items()}
        cells = "  ".join(f"{k} {r / 1e9:.1f}{share[k]}" for k, r in rates.items())
        print(f"{channels} ch {size}x{size}: {cells}")


if __name__ == "__main__":
    main()
