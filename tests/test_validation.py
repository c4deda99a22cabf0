"""Bad input is refused before anything starts: every field's range, the checks that need the data,
the output folder, and a sweep that lists all its bad runs at once. Nothing is written for a refusal."""

import errno
import json
import math
from dataclasses import fields

import conftest
import pytest
import torch
import yaml
from conftest import SMALL_DATA

from bnonly import rundir
from bnonly.cli import main
from bnonly.config import FIELD_DEFAULTS, ConfigError, TrainConfig
from bnonly.data import DataError
from bnonly.errors import OutputError
from bnonly.rundir import RunDir
from bnonly.training import train

TINY = dict(conftest.TINY, data=SMALL_DATA)
NAN, INF = float("nan"), float("inf")

# Every field, with values it must refuse and the start of the refusal.
BAD = {
    "model": [("", "not empty"), (5, "not a string")],
    "train": [("  ", "not empty")],
    "bn_affine": [("maybe", "not true or false"), (2, "not true or false")],
    "gamma_init": [("zeros", "one of uniform, ones")],
    "seed": [(-1, ">= 0"), (2**63, ">= 0 and <= 9223372036854775807"), (1.5, "not an integer"),
             (True, "not an integer")],
    "selection_seed": [(-3, ">= 0")],
    "num_classes": [(0, ">= 2"), (1, ">= 2")],
    "data": [(7, "not a string")],
    "augment": [("crop", "one of auto, cifar, imagenet, none")],
    "image_size": [(4, ">= 8"), (5000, "<= 4096")],
    "normalize": [("std", "one of imagenet, cifar, none")],
    "epochs": [(0, "> 0"), (-1, "> 0"), (NAN, "> 0"), (INF, "> 0"), ("ten", "not a number")],
    "batch_size": [(0, ">= 1"), (-5, ">= 1"), (2.5, "not an integer")],
    "sync_bn": [("perhaps", "not true or false")],
    "lr": [(-0.1, ">= 0"), (NAN, ">= 0"), (INF, ">= 0")],
    "momentum": [(-0.1, ">= 0 and < 1"), (1, ">= 0 and < 1"), (2, ">= 0 and < 1")],
    "weight_decay": [(-1e-4, ">= 0"), (NAN, ">= 0")],
    "milestones": [((120, 80), "ascending"), ((80, 80), "ascending"), ((0, 10), "positive"), (("a",), "not a comma"),
                   ((80, 200), "beyond schedule_epochs")],
    "lr_gamma": [(0, "> 0 and <= 1"), (-0.1, "> 0"), (1.5, "<= 1")],
    "warmup_epochs": [(-1, ">= 0"), (200, "longer than schedule_epochs")],
    "schedule_epochs": [(0, "> 0"), (-160, "> 0")],
    "eval_every": [(-1, ">= 0"), (NAN, ">= 0")],
    "device": [("gpu", "auto, cpu, cuda or cuda:N"), ("cuda:x", "auto, cpu, cuda or cuda:N")],
    "channels_last": [(3, "not true or false")],
    "bf16": [("yes please", "not true or false")],
    "compile": [("x", "not true or false")],
    "capture": [("y", "not true or false")],
    "fused_norm": [("maybe", "not true or false")],
    "checkpoint_activations": [(-1, ">= 0")],
    "num_workers": [(-1, ">= 0")],
    "threads": [(0, ">= 1"), (-2, ">= 1")],
    "cache_dir": [(3, "not a string")],
    "progress": [(5, "not true or false")],
    "out": [("", "not empty")],
    "optimizer": [("", "not empty"), (1, "not a string")],
    "loss": [(" ", "not empty")],
    "log": [(3, "not a string")],
    "weight_init": [(0, "not a string")],
    "init_from": [(1, "not a string")],
    "classes": [(3, "not a string")],
    "norm_weight_decay": [(-1, ">= 0"), (NAN, ">= 0")],
    "norm_lr_scale": [(0, "> 0"), (-2, "> 0"), (INF, "> 0")],
    "bn_stats": [("running", "one of batch, frozen")],
    "recalibrate_bn": [(-1, ">= 0"), (1.5, "not an integer")],
}
# Values at the edges that must be accepted.
GOOD = dict(epochs=0.5, momentum=0.0, lr=0.0, weight_decay=0.0, milestones=(), eval_every=0, threads=1, seed=2**63 - 1,
            lr_gamma=1, warmup_epochs=160, num_classes=2, image_size=8, checkpoint_activations=0, num_workers=0)


def test_every_field_has_refusal_cases():
    assert set(BAD) == set(FIELD_DEFAULTS)


@pytest.mark.parametrize("name, value, message", [(n, v, m) for n, cases in BAD.items() for v, m in cases],
                         ids=lambda x: str(x))
def test_a_field_out_of_its_range_is_refused_in_one_line(name, value, message):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{name: value})
    text = str(e.value)
    assert text.startswith(f"{name}=") and message in text and "\n" not in text


@pytest.mark.parametrize("name", sorted(GOOD))
def test_values_at_the_edges_are_accepted(name):
    assert getattr(TrainConfig(**{name: GOOD[name]}), name) == GOOD[name]


def test_each_fields_help_states_its_bounds():
    for f in fields(TrainConfig):
        allowed = f.metadata.get("allowed")
        if allowed is not None:
            assert f"[{allowed.text}]" in f.metadata["help"], f.name


def test_the_cli_and_config_files_refuse_the_same_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    base = ["train", "--data", SMALL_DATA, "--out", str(out), "--device", "cpu"]
    assert main(base + ["--epochs", "0"]) == 2
    assert capsys.readouterr().err == "bnonly train: error: epochs=0 is out of range: allowed > 0 and <= 100000\n"
    assert main(base + ["--momentum", "2"]) == 2
    assert capsys.readouterr().err.strip().endswith("momentum=2 is out of range: allowed >= 0 and < 1")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"momentum": 2, "data": SMALL_DATA}))
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith("momentum=2 is out of range: allowed >= 0 and < 1")
    assert main(["train", "--nproc", "2", "--epochs", "-1", "--data", SMALL_DATA, "--out", str(out)]) == 2
    assert "epochs=-1 is out of range" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("change, message", [
    (dict(num_classes=2), "num_classes=2 is below the 4 classes of synthetic"),
    (dict(batch_size=500), "batch_size=500 is larger than the 128 training images"),
    (dict(model="cifar_vgg_11"), "16x16 images do not fit cifar_vgg_11"),
    (dict(optimizer="adam"), "unknown optimizer 'adam'; known: sgd, adamw"),
    (dict(loss="mse"), "unknown loss 'mse'; known: cross_entropy"),
    (dict(log="wandb"), "unknown logging backend 'wandb'; known: tensorboard"),
    (dict(weight_init="xavier"), "unknown weight distribution 'xavier'; known: kaiming_normal"),
    (dict(classes="0,nope"), "nope"),
])
def test_checks_that_need_the_data_come_before_the_run_folder(tmp_path, change, message):
    cfg = TrainConfig(**{**TINY, "out": str(tmp_path / "runs"), **change})
    with pytest.raises((ConfigError, DataError), match=message):
        train(cfg, log=lambda *_: None)
    assert not (tmp_path / "runs").exists()


def test_an_out_below_a_file_is_refused_before_the_data_is_opened(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "file" / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'file'} is a file, not a folder; choose another --out" in err and err.count("\n") == 1


def test_a_failed_checkpoint_write_keeps_the_last_good_one_and_resumes(tmp_path, monkeypatch, capsys):
    cfg = TrainConfig(**{**TINY, "out": str(tmp_path / "runs"), "epochs": 3, "schedule_epochs": 3})
    straight = train(cfg.replace(out=str(tmp_path / "straight")), log=lambda *_: None)
    original, saves = rundir.atomic_write_bytes, []

    def disk_full_at_the_second_checkpoint(path, write, **kw):
        if path.name == "checkpoint.pt":
            saves.append(path)
            if len(saves) == 2:
                def half_then_full(f):
                    f.write(b"partial")
                    raise OSError(errno.ENOSPC, "No space left on device")
                return original(path, half_then_full, **kw)
        return original(path, write, **kw)

    monkeypatch.setattr(rundir, "atomic_write_bytes", disk_full_at_the_second_checkpoint)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    assert "the last good checkpoint (step 4) is intact" in err
    run = RunDir(tmp_path / "runs" / cfg.run_name)
    assert run.load_checkpoint()[0]["step"] == 4 and not run.summary.exists()  # not recorded as failed
    assert not list(run.path.glob(".*.tmp"))
    monkeypatch.setattr(rundir, "atomic_write_bytes", original)
    resumed = train(cfg, log=lambda *_: None)
    a, b = (torch.load(RunDir(s["run_dir"]).final_weights) for s in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_sweep_lists_every_bad_run_before_training_any(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(dict(base={**TINY, "milestones": [1]}, grid=[
        {"seed": [0, 1]},
        {"momentum": [2]},
        {"model": ["cifar_resnet_9"]},
        {"train": ["bn+gama"]},
        {"data": [str(tmp_path / "missing")]},
    ])))
    out = tmp_path / "runs"
    for launcher in ("local", "submitit-local"):
        assert main(["sweep", str(spec), "--out", str(out), "--launcher", launcher]) == 2
        err = capsys.readouterr().err
        assert "4 of the sweep's 6 runs are invalid, so none was started" in err
        for line in ("run 3 (momentum=2): momentum=2 is out of range",
                     "run 4 (model=cifar_resnet_9): invalid model name",
                     "run 5 (train=bn+gama): unknown what-trains term 'gama'", "run 6 (data="):
            assert line in err, line
        assert not out.exists()


def test_nan_and_infinite_floats_never_reach_the_loop():
    for name in ("epochs", "lr", "momentum", "weight_decay", "lr_gamma", "warmup_epochs", "schedule_epochs",
                 "eval_every"):
        for value in (NAN, INF, -INF):
            with pytest.raises(ConfigError, match=f"^{name}="):
                TrainConfig(**{name: value})
    assert math.isfinite(TrainConfig().lr)


def test_eval_every_zero_evaluates_only_at_the_end(tmp_path):
    summary = train(TrainConfig(**{**TINY, "out": str(tmp_path), "eval_every": 0}), log=lambda *_: None)
    assert [r["epoch"] for r in RunDir(summary["run_dir"]).read_metrics()] == [2]


def test_output_error_is_a_bnonly_error_with_exit_2():
    assert OutputError("x").exit_code == 2


@pytest.mark.parametrize("argv,message", [
    (["sweep", "s.yaml", "--jobs", "0"], "argument --jobs: 0 is out of range: allowed >= 1"),
    (["sweep", "s.yaml", "--runs-per-gpu", "-1"], "argument --runs-per-gpu: -1 is out of range: allowed >= 1"),
    (["sweep", "s.yaml", "--launcher", "slurm", "--time", "0"], "argument --time: 0 is out of range: allowed >= 1"),
    (["sweep", "s.yaml", "--gpus-per-run", "-1"], "argument --gpus-per-run: -1 is out of range: allowed >= 0"),
    (["sweep", "s.yaml", "--max-parallel", "0"], "argument --max-parallel: 0 is out of range: allowed >= 1"),
    (["sweep", "s.yaml", "--mem-gb", "0"], "argument --mem-gb: 0 is out of range: allowed > 0"),
    (["sweep", "s.yaml", "--mem-gb", "nan"], "argument --mem-gb: nan is out of range: allowed > 0"),
    (["bench", "--runs", "0"], "argument --runs: 0 is out of range: allowed >= 1"),
    (["bench", "--seconds", "-1"], "argument --seconds: -1 is out of range: allowed > 0"),
    (["bench", "--windows", "two"], "argument --windows: 'two' is not an integer"),
    (["train", "--nproc", "0"], "argument --nproc: 0 is out of range: allowed >= 1"),
])
def test_command_options_out_of_range_are_refused_before_anything_runs(argv, message, capsys):
    # Once --jobs 0 and --seconds -1 were taken silently (as 1, and as an empty measurement).
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
