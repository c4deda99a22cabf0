#!/usr/bin/env python3
"""``bnonly train`` throughput of two revisions of bnonly, side by side on the same machine.

Each revision is checked out (``git worktree``) into a temporary folder and run from its own
``src/`` (so nothing is installed), alternately, ``--rounds`` times, on the same short run; the
``images_per_second`` of each run's summary.json (training images over training time, evaluation
excluded) is compared as the median of the paired per-round ratios, which a machine whose load
drifts affects least. Used to check that a refactor kept the speed of the training loop:

    python benchmarks/ab_train.py d3a15f3 HEAD --rounds 3 -- --model cifar_resnet_14 --train bn \\
        --epochs 0.2 --data ../shared/data/cifar10-jpeg --threads 1 --eval-every 0
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


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(into), rev], check=True,
                   capture_output=True)
    return into


def one_run(tree: Path, args: list[str], out: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    cmd = [sys.executable, "-m", "bnonly", "train", *args, "--out", str(out), "--no-progress"]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True, text=True)
    summary = next(out.glob("*/summary.json"))
    return json.loads(summary.read_text())["images_per_second"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None, help="append the result as one JSON line here")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = p.parse_args(argv[:cut])
    train_args = argv[cut + 1:]  # after --: the bnonly train arguments
    with tempfile.TemporaryDirectory(prefix="bnonly-ab-") as tmp:
        tmp = Path(tmp)
        trees = {rev: checkout(rev, tmp / f"tree{i}") for i, rev in enumerate((a.old, a.new))}
        try:
            rates: dict[str, list[float]] = {a.old: [], a.new: []}
            for r in range(a.rounds):
                order = (a.old, a.new) if r % 2 == 0 else (a.new, a.old)  # alternate who goes first
                for rev in order:
                    rates[rev].append(one_run(trees[rev], train_args, tmp / f"out-{rev}-{r}"))
                print(f"round {r + 1}: " + "  ".join(f"{rev} {rates[rev][-1]:.0f} img/s" for rev in (a.old, a.new)),
                      flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    ratio = statistics.median(n / o for o, n in zip(rates[a.old], rates[a.new]))
    result = dict(old=a.old, new=a.new, args=train_args, old_img_s=rates[a.old], new_img_s=rates[a.new],
                  new_over_old=round(ratio, 3))
    print(f"{a.new} / {a.old}: {ratio:.3f} (median of paired rounds)")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
