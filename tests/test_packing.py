"""Several runs at once on one device: where the sweep places them, that a run trained next to
others ends exactly as it does alone, and the aggregate-throughput benchmark."""

import json

import pytest
import torch
from conftest import QUIET, TINY

from bnonly.cli import main
from bnonly.config import TrainConfig
from bnonly.rundir import RunDir
from bnonly.sweep import LocalSweep, SweepError, gpu_of_slot, jobs_for
from bnonly.training import train


def test_runs_per_gpu_places_k_runs_on_every_gpu():
    assert jobs_for(None, 4, gpus=2) == 8
    assert sorted(gpu_of_slot(s, 2) for s in range(8)) == ["0"] * 4 + ["1"] * 4
    assert [gpu_of_slot(s, 1) for s in range(3)] == ["0", "0", "0"]
    assert gpu_of_slot(0, 0) is None and jobs_for(None, None, gpus=0) == 1 and jobs_for(3, None, gpus=1) == 3
    with pytest.raises(SweepError, match="needs a GPU and this machine has none"):
        jobs_for(None, 2, gpus=0)
    with pytest.raises(SweepError, match="not both"):
        jobs_for(2, 2, gpus=1)


def test_a_run_trained_next_to_another_ends_as_it_does_alone(tmp_path):
    # Two processes at once, one thread each (pinned): the same arithmetic as each run alone.
    cfgs = [TrainConfig(**{**TINY, "seed": s, "out": str(tmp_path / "packed")}) for s in (0, 1)]
    outcomes = LocalSweep(cfgs, jobs=2, log=lambda *_: None).run()
    assert sorted(outcomes["done"]) == sorted(c.run_name for c in cfgs)
    for cfg in cfgs:
        alone = train(cfg.replace(out=str(tmp_path / "alone")), **QUIET)
        a = torch.load(RunDir(alone["run_dir"]).final_weights)
        b = torch.load(RunDir(tmp_path / "packed" / cfg.run_name).final_weights)
        assert all(torch.equal(a[k], b[k]) for k in a), cfg.seed


def test_bench_runs_measures_the_aggregate_of_k_runs_against_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("bnonly.bench.usable_cores", lambda: 2)  # two runs at one thread, one run at two
    out = tmp_path / "packed.jsonl"
    assert main(["bench", "--model", "cifar_resnet_8_8", "--data", TINY["data"], "--batch-size", "16", "--device",
                 "cpu", "--runs", "2", "--seconds", "1", "--warmup", "1", "--quiet", "--json", str(out)]) == 0
    assert "2 runs of cifar_resnet_8_8 train=bn at once" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert len(r["alone"]["per_run"]) == 1 and len(r["packed"]["per_run"]) == 2 and r["threads"] >= 1
    assert all(rate > 0 for rate in r["alone"]["per_run"] + r["packed"]["per_run"])
    assert r["packed"]["aggregate"] == pytest.approx(sum(r["packed"]["per_run"]), abs=0.2)
    assert r["factor"] == pytest.approx(r["packed"]["aggregate"] / r["alone"]["aggregate"], abs=0.01)
    # ... and against one run on every core: what a CPU sweep's --jobs decides between
    assert r["threads"] == 1 and r["wide_threads"] == 2 and len(r["wide"]["per_run"]) == 1
    assert r["factor_vs_wide"] == pytest.approx(r["packed"]["aggregate"] / r["wide"]["aggregate"], abs=0.01)
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it (tests/test_validation.py)
        main(["bench", "--runs", "0", "--device", "cpu"])
    assert exit_.value.code == 2
