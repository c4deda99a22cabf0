#!/usr/bin/env python3
"""Throughput table: ``bnonly bench`` for each model x what-trains spec, one process each, then a
markdown table of the results (the AVX2 table of docs/speed.md is this script's output).

    python benchmarks/throughput.py                                 # cifar_resnet_20/56 x bn/all, batch 128
    python benchmarks/throughput.py --out results/bench.jsonl --bench-args="--compile"
    python benchmarks/throughput.py --table results/bench.jsonl     # only render existing results

Every argument in --bench-args goes to ``bnonly bench`` unchanged (e.g. --device cuda, --threads 1,
--windows 3, --no-conventional).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from bnonly.bench import paired_speedup


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:.1f}" if images_per_s < 10 else f"{images_per_s:.0f}"


def render(rows: list[dict]) -> str:
    """Markdown table; speedups are medians of paired (back-to-back) window ratios."""
    head = ["model", "train", "fast path", "fast img/s", "conventional img/s", "fast / conv", "same threads",
            "peak MiB fast / conv", "FLOPs/img", "fast GFLOP/s", "% of compute-dtype peak", "% of bf16 peak"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        fast = r["rows"][0]
        conv = next((x for x in r["rows"] if x["pipeline"] == "conventional"), None)
        same = next((x for x in r["rows"] if x["pipeline"].startswith("conventional@")), None)
        dt = r["compute_dtype"]
        flags = [f for f, on in (("channels_last", r["channels_last"]), ("compile", r["compile"]),
                                 ("captured step", r.get("capture")),
                                 (f"checkpoint {r['checkpoint_activations']}", r["checkpoint_activations"])) if on]
        cells = [
            r["model"], r["train"], " ".join([dt, *flags, f"{fast['threads']} thr"]), _rate(fast["images_per_s"]),
            f"{_rate(conv['images_per_s'])} ({conv['threads']} thr)" if conv else "-",
            f"{paired_speedup(fast['windows'], conv['windows']):.2f}x" if conv else "-",
            f"{paired_speedup(fast['windows'], same['windows']):.2f}x" if same else "-",
            f"{fast['peak_mib']:.0f} / {conv['peak_mib']:.0f}" if conv else f"{fast['peak_mib']:.0f} / -",
            f"{r['flops_per_image'] / 1e6:.1f} M", f"{fast['achieved_gflops']:.1f}",
            f"{100 * fast[f'fraction_of_{dt}_peak']:.0f}% of {r['matmul_peak_gflops'][dt]:.0f}",
            f"{100 * fast['fraction_of_bfloat16_peak']:.0f}% of {r['matmul_peak_gflops']['bfloat16']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cifar_resnet_20,cifar_resnet_56")
    parser.add_argument("--specs", default="bn,all")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="results/bench.jsonl", help="JSON lines appended here")
    parser.add_argument("--bench-args", default="", help="more arguments for bnonly bench, as one string")
    parser.add_argument("--table", default=None, metavar="JSONL", help="only render this results file")
    args = parser.parse_args()
    if args.table:
        print(render([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return 0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    start = len(Path(args.out).read_text().splitlines()) if Path(args.out).exists() else 0
    for model in args.models.split(","):
        for spec in args.specs.split(","):
            cmd = [sys.executable, "-m", "bnonly", "bench", "--model", model, "--train", spec,
                   "--batch-size", str(args.batch_size), "--json", args.out, *shlex.split(args.bench_args)]
            print("$", shlex.join(cmd), flush=True)
            if subprocess.call(cmd) != 0:
                print(f"bench failed for {model} {spec}", file=sys.stderr)
    rows = [json.loads(line) for line in Path(args.out).read_text().splitlines()[start:] if line.strip()]
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
