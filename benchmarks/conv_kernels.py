#!/usr/bin/env python3
"""The CPU convolution kernels a BN-only step could use, on the CIFAR ResNet layer shapes
(3x3, stride 1, batch 128), interleaved and timed in one process: GFLOP/s of each.

    python benchmarks/conv_kernels.py [--threads 1]

- oneDNN forward, NCHW and channels_last (what PyTorch runs);
- oneDNN input gradient (convolution_backward with output mask [True, False, False], what a
  frozen conv's backward runs), and the same gradient as a *forward* conv with the weight
  flipped and transposed once (possible only because the weight never changes);
- im2col + GEMM (PyTorch's slow_conv2d) and NNPACK (Winograd-based), the alternatives.
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cl = torch.channels_last
    print(f"threads {args.threads}; GFLOP/s, median of {args.repeats} interleaved repeats")
    for channels, size in ((16, 32), (32, 16), (64, 8)):
        x = torch.randn(128, channels, size, size)
        w = torch.randn(channels, channels, 3, 3)
        xc, wc = x.contiguous(memory_format=cl), w.contiguous(memory_format=cl)
        flipped = w.flip(2, 3).transpose(0, 1).contiguous(memory_format=cl)
        mask = [True, False, False]
        kernels = {
            "oneDNN fwd NCHW": lambda: F.conv2d(x, w, padding=1),
            "oneDNN fwd channels_last": lambda: F.conv2d(xc, wc, padding=1),
            "oneDNN input-grad (cl)": lambda: torch.ops.aten.convolution_backward(
                xc, xc, wc, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask),
            "fwd with pre-flipped weight (cl)": lambda: F.conv2d(xc, flipped, padding=1),
            "im2col+GEMM (slow_conv2d)": lambda: torch._C._nn.thnn_conv2d(x, w, 3, None, 1, 1),
        }
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
        cells = "  ".join(f"{k} {flops / statistics.median(v) / 1e9:.1f}" for k, v in times.items())
        print(f"{channels} ch {size}x{size}: {cells}")


if __name__ == "__main__":
    main()
