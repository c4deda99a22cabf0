#!/usr/bin/env python3
"""What the CPU fast path's two memory measures buy, each against its baseline, on one machine:

- the fused norm-act kernel (``bnonly.fused_norm``) against the plain BatchNorm/ReLU modules:
  ``bnonly bench --unfused`` times both in one process, interleaved;
- glibc keeping freed memory (``bnonly.speed.keep_freed_memory``) against glibc's default, which
  is per process: each round runs the same bench in two processes, one with the setting and one
  without, back to back, and the ratio is the median over rounds of the paired ratios.

    python benchmarks/fused_norm.py --rounds 3 --json benchmarks/results/fused_norm_cpu.jsonl \\
        -- --model cifar_resnet_20 --train bn --threads 1 --windows 3 --steps 3

Arguments after ``--`` go to ``bnonly bench`` (``--no-conventional --unfused --json`` are added).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import sys
import bnonly.speed
if sys.argv[1] == "default":
    bnonly.speed.keep_freed_memory = lambda: False  # glibc's default allocator behaviour
from bnonly.cli import main
sys.exit(main(sys.argv[2:]))
"""


def bench(allocator: str, args: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-c", CHILD, allocator, "bench", *args, "--no-conventional", "--unfused", "--quiet",
           "--json", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True,
                   env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    result = json.loads(out.read_text().splitlines()[-1])
    rows = {row["pipeline"]: row["images_per_s"] for row in result["rows"]}
    return dict(fused=rows["fast"], unfused=rows.get("fast-unfused"), speedup_fused=result.get("speedup_fused"),
                load_average=result["load_average"], device_name=result["device_name"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None, help="append the result as one JSON line here")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    args = a.bench_args[1:] if a.bench_args[:1] == ["--"] else a.bench_args
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            pair = {alloc: bench(alloc, args, Path(tmp) / f"{alloc}{r}.jsonl") for alloc in ("default", "kept")}
            rounds.append(pair)
            print(f"round {r + 1}: " + "  ".join(
                f"{k} malloc: fused {v['fused']:.0f} unfused {v['unfused']:.0f} img/s" for k, v in pair.items()),
                flush=True)
    med = (lambda xs: round(statistics.median(xs), 3))
    result = dict(
        bench_args=args, rounds=rounds, device_name=rounds[0]["kept"]["device_name"],
        fused_over_unfused=med([p[k]["speedup_fused"] for p in rounds for k in p]),
        kept_over_default_malloc=dict(fused=med([p["kept"]["fused"] / p["default"]["fused"] for p in rounds]),
                                      unfused=med([p["kept"]["unfused"] / p["default"]["unfused"] for p in rounds])),
        # today's fast path (kept memory, fused) against the one before both (default malloc, unfused)
        both_over_neither=med([p["kept"]["fused"] / p["default"]["unfused"] for p in rounds]),
    )
    print(f"fused / unfused (paired windows in each process): {result['fused_over_unfused']:.2f}x;  kept / default "
          f"malloc: fused {result['kept_over_default_malloc']['fused']:.2f}x, unfused "
          f"{result['kept_over_default_malloc']['unfused']:.2f}x;  both / neither: {result['both_over_neither']:.2f}x")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
