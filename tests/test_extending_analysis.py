"""A worked example of extending the analysis from your own code, without editing bnonly: register
an evaluator, run ``bnonly analyze`` and ``bnonly report``, and find its number in analysis.json,
runs.csv and the report's table."""

import json
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from bnonly.analysis import EVALUATORS, Column, affine_values, evaluator
from bnonly.cli import main
from bnonly.config import TrainConfig
from bnonly.models import create_model
from bnonly.training import train

TINY = dict(model="cifar_resnet_8_8", train="bn", data="synthetic:train=128,test=64,classes=4,size=16",
            batch_size=32, epochs=2, milestones=[1], schedule_epochs=2, augment="none", progress=False,
            device="cpu", threads=1)


def gamma_above_half(ctx, options):
    """Share of BN features whose γ is above 0.5 (γ starts U[0, 1], so about half at initialization)."""
    gamma = torch.cat([affine_values(module)[0] for _, module in ctx.layers])
    return {"fraction": (gamma > 0.5).double().mean().item(), "n_features": gamma.numel()}


def register():
    evaluator("gamma_above_half", version=1,
              columns=[Column("gamma_above_half", lambda section: section["fraction"], "γ > 0.5")])(gamma_above_half)


def test_an_evaluator_registered_here_reaches_analysis_json_and_the_report(tmp_path):
    runs = tmp_path / "runs"
    run_dir = Path(train(TrainConfig(**TINY, out=str(runs)), log=lambda *_: None)["run_dir"])
    assert main(["analyze", str(run_dir), "--draws", "2", "--no-figures"]) == 0
    before = json.loads((run_dir / "analysis.json").read_text())["sections"]

    register()
    try:
        assert main(["analyze", str(run_dir), "--draws", "2", "--no-figures"]) == 0
        after = json.loads((run_dir / "analysis.json").read_text())["sections"]
        assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    finally:
        EVALUATORS.unregister("gamma_above_half")
    assert "gamma_above_half" not in EVALUATORS

    final = torch.load(run_dir / "final.pt")
    names = [n for n, m in create_model(TINY["model"], 4).named_modules() if isinstance(m, nn.BatchNorm2d)]
    gamma = torch.cat([final[f"{n}.weight"] for n in names])
    expected = (gamma > 0.5).double().mean().item()
    assert 0.2 < expected < 0.8  # a number worth checking, not a trivial 0 or 1
    section = after["gamma_above_half"]
    assert section == {"fraction": expected, "n_features": 168, "version": 1, "options": {},
                       "seconds": section["seconds"]}
    assert {name: after[name] for name in before} == before  # the built-in sections were kept, not redone

    assert pd.read_csv(tmp_path / "report" / "runs.csv")["gamma_above_half"].tolist() == [expected]
    lines = (tmp_path / "report" / "report.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| model | what trains | runs |"))
    assert lines[header].endswith("| as many random zeroed | γ > 0.5 |")
    row = lines[header + 2]
    assert row.startswith("| cifar_resnet_8_8 | `bn` | 1 |") and row.endswith(f"| {100 * expected:.1f} |")
