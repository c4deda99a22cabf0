#!/usr/bin/env python3
"""Does the fast path lose accuracy? A seeded BN-only run with the fast path against the same run
in float32 NCHW (no compile), both through ``bnonly train``, side by side (one process each).

    python benchmarks/accuracy_check.py                       # ResNet-14, 10 epochs, full CIFAR-10
    python benchmarks/accuracy_check.py --epochs 1 --data synthetic:train=512,test=256,classes=10,size=32

The fast run uses the fast defaults of the device (here channels_last float32; on a GPU
channels_last bf16 with frozen weights pre-cast) plus ``--fast-args`` (default ``--compile``).
Exits 1 if the final test accuracies differ by more than --tolerance points.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar_resnet_14")
    parser.add_argument("--train", default="bn")
    parser.add_argument("--epochs", default="10")
    parser.add_argument("--seed", default="0")
    parser.add_argument("--data", default="../shared/data/cifar10-jpeg")
    parser.add_argument("--out", default="results/accuracy_check")
    parser.add_argument("--threads", default="1", help="CPU threads per run (the two runs go side by side)")
    parser.add_argument("--fast-args", default="--compile", help="extra bnonly train flags of the fast run")
    parser.add_argument("--tolerance", type=float, default=1.0, help="allowed difference, in accuracy points")
    args = parser.parse_args()
    common = ["--model", args.model, "--train", args.train, "--epochs", args.epochs, "--seed", args.seed,
              "--data", args.data, "--threads", args.threads, "--no-progress"]
    runs = {
        "fast": common + ["--out", f"{args.out}/fast", *shlex.split(args.fast_args)],
        "fp32 NCHW": common + ["--out", f"{args.out}/fp32_nchw", "--no-channels-last", "--no-bf16", "--no-compile"],
    }
    procs = {}
    for name, flags in runs.items():
        cmd = [sys.executable, "-m", "bnonly", "train", *flags]
        print(f"[{name}] $ {shlex.join(cmd)}", flush=True)
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    summaries = {}
    for name, proc in procs.items():
        out, _ = proc.communicate()
        print(f"[{name}] {out.strip()}")
        if proc.returncode != 0:
            print(f"[{name}] failed with exit status {proc.returncode}", file=sys.stderr)
            return 2
        run_dir = out.strip().rsplit("-> ", 1)[-1]
        with open(f"{run_dir}/summary.json") as f:
            summaries[name] = json.load(f)
    fast, ref = summaries["fast"], summaries["fp32 NCHW"]
    diff = 100 * (fast["test_acc"] - ref["test_acc"])
    for name, s in summaries.items():
        print(f"{name:<10} test acc {100 * s['test_acc']:.2f}%  top5 {100 * s['test_top5']:.2f}%  "
              f"{s['images_per_second']:.0f} img/s  {s['wall_seconds']:.0f} s  (bf16 {s['bf16']}, "
              f"channels_last {s['channels_last']})")
    ok = abs(diff) <= args.tolerance
    print(f"fast - fp32 NCHW: {diff:+.2f} points ({'within' if ok else 'OUTSIDE'} {args.tolerance} point)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
