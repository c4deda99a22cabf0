"""Split the disabled-feature ablation by where each BatchNorm's output goes.

``bnonly analyze`` zeroes every disabled feature's BN output. For a BN whose output goes straight
into a ReLU, a feature that is off (BN output <= 0) for >= 99% of inputs is also zero after the
ReLU, so zeroing it should change almost nothing. For a BN whose output is added to a residual
shortcut first, "off" means the channel never adds anything positive to the sum; zeroing it
removes a negative contribution, which can switch the summed channel on. This script measures
the two kinds separately on finished, analysed runs, reading the disabled masks from their
``analysis.json``, and prints a markdown table (the reproduction notes quote it).

    python results/cifar10_repro/ablation_split.py /root/bnonly-repro/runs --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnonly.analysis import ANALYSIS_FILE, finished_runs, load_run, zeroed_features
from bnonly.training import evaluate


def relu_fed_batchnorms(model: nn.Module) -> set[str]:
    """Names of the BN modules whose output is used only by ReLUs (found by tracing the model)."""
    traced = fx.symbolic_trace(model)
    modules = dict(traced.named_modules())

    def is_relu(node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(modules[node.target], nn.ReLU)
        return node.op == "call_function" and node.target in (F.relu, torch.relu)

    return {node.target for node in traced.graph.nodes
            if node.op == "call_module" and isinstance(modules[node.target], _BatchNorm)
            and node.users and all(is_relu(user) for user in node.users)}


def split_ablation(run_dir: Path, threads: int | None) -> dict:
    analysis = json.loads((run_dir / ANALYSIS_FILE).read_text())
    share = analysis["options"]["dead_share"]
    loaded = load_run(run_dir, threads=threads)
    relu_fed = relu_fed_batchnorms(loaded.model)
    disabled = {layer["name"]: torch.tensor(layer["channels"]["off_share"]) >= share for layer in analysis["layers"]}
    result = dict(run=run_dir.name, baseline=analysis["ablation"]["baseline_acc"],
                  all_zeroed=analysis["ablation"]["disabled_zeroed_acc"], n_all=analysis["ablation"]["n_zeroed"],
                  features_relu_fed=sum(m.numel() for name, m in disabled.items() if name in relu_fed))
    for kind, keep in (("relu_fed", lambda name: name in relu_fed), ("residual", lambda name: name not in relu_fed)):
        masks = {name: mask for name, mask in disabled.items() if keep(name)}
        result[f"n_{kind}"] = int(sum(int(m.sum()) for m in masks.values()))
        if result[f"n_{kind}"] == 0:
            result[kind] = result["baseline"]
            continue
        with zeroed_features(loaded.model, masks):
            result[kind] = evaluate(loaded.model, loaded.test_batches, bf16=loaded.bf16, device=loaded.device)["test_acc"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="a folder holding finished runs, analysed by `bnonly analyze`")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="*", default=None, help="run folder names to include (default: all)")
    args = parser.parse_args(argv)
    runs = [p for p in finished_runs(args.runs) if (p / ANALYSIS_FILE).exists()
            and (args.only is None or p.name in args.only)]
    if not runs:
        raise SystemExit(f"error: no analysed finished runs below {args.runs}; run `bnonly analyze {args.runs}` first")
    print("| run | test acc | all disabled zeroed (n) | ReLU-fed disabled zeroed (n) | residual-side disabled zeroed (n) "
          "| disabled share of ReLU-fed features |")
    print("|---|---|---|---|---|---|")
    for run_dir in runs:
        r = split_ablation(run_dir, args.threads)
        print(f"| {r['run']} | {100 * r['baseline']:.1f} | {100 * r['all_zeroed']:.1f} ({r['n_all']}) "
              f"| {100 * r['relu_fed']:.1f} ({r['n_relu_fed']}) | {100 * r['residual']:.1f} ({r['n_residual']}) "
              f"| {100 * r['n_relu_fed'] / r['features_relu_fed']:.1f}% of {r['features_relu_fed']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
