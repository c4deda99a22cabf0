"""Sweeps: spec expansion, the shipped sweep files, local --jobs runs with locks, failures,
status, a stop signal, and the Slurm launcher through submitit's local executor."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import DATA

from bnonly import slurm
from bnonly.cli import main
from bnonly.config import ConfigError, from_dict
from bnonly.rundir import RunDir
from bnonly.sweep import LocalSweep, SweepError, classify, expand, load_spec, state, status
from bnonly.training import EXIT_INTERRUPTED, EXIT_LOCKED, train

REPO = Path(__file__).resolve().parents[1]
BASE = dict(model="cifar_resnet_8_8", data=DATA, batch_size=32, epochs=1, milestones=[1], schedule_epochs=1,
            augment="none", device="cpu")


def write_spec(path, base=None, grid=None, **top):
    path.write_text(yaml.safe_dump(dict(top, base={**BASE, **(base or {})}, grid=grid or {}), sort_keys=False))
    return path


def test_spec_expands_products_unions_and_drops_duplicates(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", grid=[{"train": ["bn", "all"], "seed": [0, 1]},
                                                 {"train": ["bn"], "seed": [0], "lr": [0.1]}])
    cfgs = expand(load_spec(spec), out=str(tmp_path / "out"))
    # 2 x 2, plus one run whose lr is the default: the same run as (bn, 0), so dropped.
    assert [(c.train, c.seed) for c in cfgs] == [("bn", 0), ("bn", 1), ("all", 0), ("all", 1)]
    assert all(c.out == str(tmp_path / "out") and c.epochs == 1.0 and c.milestones == (1,) for c in cfgs)
    assert cfgs[0] == from_dict({**BASE, "out": str(tmp_path / "out")})
    preset = expand(load_spec(write_spec(tmp_path / "p.yaml", preset="imagenet",
                                         grid={"seed": [3], "warmup_epochs": [0]})))
    assert preset[0].lr == 0.4 and preset[0].batch_size == 32 and preset[0].seed == 3 and preset[0].out == "runs"

    for bad, message in [(dict(grid={"seed": 3}), "non-empty list"), (dict(grid={"sed": [1]}), "unknown config field"),
                         (dict(grid={"seed": [1]}, runs=2), "keys preset, base, grid")]:
        write_spec(tmp_path / "bad.yaml", **bad)
        with pytest.raises((SweepError, ConfigError), match=message):
            expand(load_spec(tmp_path / "bad.yaml"))
    assert main(["sweep", str(tmp_path / "bad.yaml")]) == 2
    assert "keys preset, base, grid" in capsys.readouterr().err


def test_paper_sweep_files_cover_the_study():
    deep, wide, what = (expand(load_spec(REPO / "sweeps" / f"cifar10_{n}.yaml"))
                        for n in ("deep", "wide", "what_trains"))
    configs = ["all", "bn", "bn+output", "output", "random-per-channel:2", "random:matched"]
    assert {c.model for c in deep} == {f"cifar_resnet_{d}" for d in (14, 32, 56, 110, 218, 434, 866)}
    assert {c.model for c in wide} == {"cifar_resnet_14"} | {f"cifar_resnet_14_{w}" for w in (32, 64, 128, 256, 512)}
    for family in (deep, wide):
        assert {c.train for c in family} == set(configs) and {c.seed for c in family} == {0, 1, 2}
        assert len(family) == len({c.model for c in family}) * 6 * 3
    assert {c.train for c in what} >= set(configs) | {"gamma", "beta"}
    assert any(not c.bn_affine and c.train == "all" for c in what) and any(c.gamma_init == "ones" for c in what)
    assert all(c.data == "../shared/data/cifar10-jpeg" and c.epochs == 160 for c in deep + wide + what)
    # Shared runs (ResNet-14 at width 16) are the same run folders in both families.
    assert {c.run_name for c in deep if c.model == "cifar_resnet_14"} <= {c.run_name for c in wide}


def test_local_sweep_two_jobs_trains_records_failures_and_skips_on_rerun(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", grid=[
        {"train": ["bn"], "seed": [0, 1]},
        {"train": ["all"], "lr": [1e6]},                       # NaN loss
        {"train": ["bn"], "num_classes": [2]},                  # fewer classes than the data: refused once opened
    ])
    out = tmp_path / "runs"
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "2"]) == 1
    assert "2 done; 2 failed" in capsys.readouterr().out
    cfgs = expand(load_spec(spec), str(out))
    summaries = [RunDir(out / c.run_name).read_summary() for c in cfgs]
    assert [s["status"] for s in summaries] == ["done"] * 2 + ["failed"] * 2
    assert "non-finite training loss" in summaries[2]["reason"] and summaries[2]["traceback"]
    assert summaries[3]["reason"].startswith("ConfigError: num_classes=2 is below the 4 classes")
    # Each run got half the CPU threads (recorded with its compute settings), and its output is in its folder.
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert all(s["compute"]["threads"] == threads for s in summaries[:3])
    assert all(json.loads((out / c.run_name / "config.json").read_text())["threads"] is None for c in cfgs[:2])
    assert "epoch 1/1" in (out / cfgs[0].run_name / "train.log").read_text()

    st = status(cfgs)
    assert st["counts"] == dict(done=2, running=0, failed=2, pending=0)
    assert main(["sweep", str(spec), "--out", str(out), "--status"]) == 0
    shown = capsys.readouterr().out
    assert "done 2  running 0  failed 2  pending 0" in shown and "non-finite" in shown

    started = time.perf_counter()
    again = LocalSweep(cfgs, jobs=2, log=lambda *_: None).run()
    assert time.perf_counter() - started < 5  # nothing is trained again
    assert again == {"already done": [c.run_name for c in cfgs[:2]],
                     "failed before (--retry-failed retries)": [c.run_name for c in cfgs[2:]]}


def test_status_says_how_far_running_and_stopped_runs_are_and_when_they_end(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", base={"epochs": 160, "out": str(tmp_path / "runs")},
                      grid={"seed": [0, 1, 2, 3]})
    cfgs = expand(load_spec(spec))
    # seed 0 is being trained (locked), seed 1 stopped part way, seed 2 not started, seed 3 has
    # metrics but no checkpoint to resume from (it would start over): not "stopped part way".
    walls = [0, 100, 200, 1200, 1300, 1400, 1500, 1610]  # a pause between epochs 2 and 3; the latest took 110 s
    RunDir(tmp_path / "runs" / cfgs[0].run_name).write_metrics(
        [dict(epoch=float(e), wall_seconds=float(w), format=2) for e, w in enumerate(walls) if e])
    for seed in (1, 3):
        RunDir(tmp_path / "runs" / cfgs[seed].run_name).write_metrics([dict(epoch=1.0, wall_seconds=40.0, format=2)])
    (tmp_path / "runs" / cfgs[1].run_name / "checkpoint.pt").write_bytes(b"")
    with RunDir(tmp_path / "runs" / cfgs[0].run_name).lock():
        st = status(cfgs)
        assert main(["sweep", str(spec), "--status"]) == 0
    shown = capsys.readouterr().out
    # the median of the last five paces (1000, 100, 100, 100, 110): the pause does not set it
    assert st["running"][0]["progress"] == dict(epoch=7.0, epochs=160, seconds_per_epoch=100.0, seconds_left=15300.0)
    assert st["stopped"] == [dict(run=cfgs[1].run_name, progress=dict(
        epoch=1.0, epochs=160, seconds_per_epoch=40.0, seconds_left=6360.0))]
    assert "epoch 7/160, 100 s an epoch lately, about 4.2 h left at that pace" in shown
    assert f"stopped part way (the same command resumes them from their checkpoints):\n  {cfgs[1].run_name}: " \
           "epoch 1/160, 40 s an epoch lately, about 1.8 h left at that pace" in shown
    assert cfgs[2].run_name not in shown and cfgs[3].run_name not in shown
    assert st["counts"] == dict(done=0, running=1, failed=0, pending=3) and st["resumable"] == 1


def test_a_locked_run_is_never_trained_twice(tmp_path, capsys):
    cfg = from_dict({**BASE, "out": str(tmp_path / "runs"), "threads": 1, "progress": False})
    run = RunDir(tmp_path / "runs" / cfg.run_name)
    with run.lock():  # as if another sweep were training it
        assert state(cfg) == "running"
        assert LocalSweep([cfg], jobs=2, log=lambda *_: None).run() == {"running elsewhere": [cfg.run_name]}
        st = status([cfg])
        assert st["counts"]["running"] == 1 and f"pid {os.getpid()}" in st["running"][0]["holder"]
        args = ["train", "--config", str(tmp_path / "c.json")]
        (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
        assert main(args) == EXIT_LOCKED
        assert "being trained by another process" in capsys.readouterr().err
    assert not run.summary.exists() and state(cfg) == "pending"
    assert train(cfg, log=lambda *_: None)["status"] == "done"


def wait_for_rows(*runs: RunDir, more_than=0, timeout=90):
    deadline = time.time() + timeout
    while not all(len(r.read_metrics()) > more_than for r in runs) and time.time() < deadline:
        time.sleep(0.02)


def in_background(action):
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def test_stopped_and_killed_runs_resume_on_the_next_launch(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", base=dict(epochs=12, eval_every=0.5, milestones=[], schedule_epochs=12),
                      grid=[{"seed": [0, 1]}, {"seed": [2], "epochs": [1]}])
    out = tmp_path / "runs"
    cfgs = expand(load_spec(spec), str(out))
    a, b, c = (RunDir(out / cfg.run_name) for cfg in cfgs)

    # A stop signal to the sweep: both running runs checkpoint, the third never starts, exit 75.
    def stop():
        wait_for_rows(a, b)
        os.kill(os.getpid(), signal.SIGTERM)

    in_background(stop)
    assert main(["sweep", str(spec), "--out", str(out), "--jobs", "2"]) == EXIT_INTERRUPTED
    assert "2 interrupted; 1 not started" in capsys.readouterr().out
    steps = [(r.load_checkpoint()[0] or {}).get("step") for r in (a, b, c)]
    assert all(0 < s < 96 for s in steps[:2]) and steps[2] is None and not c.path.exists()
    assert [state(cfg) for cfg in cfgs] == ["pending"] * 3

    # A run process killed outright (the OOM killer, say) fails that run only, recorded by the sweep.
    rows = len(a.read_metrics())
    in_background(lambda: (wait_for_rows(a, more_than=rows),
                           os.kill(int(a.lock_file.read_text().split("pid")[1]), signal.SIGKILL)))
    assert LocalSweep(cfgs[:1], log=lambda *_: None).run() == {"failed": [a.path.name]}
    assert a.read_summary()["reason"].startswith("killed by SIGKILL") and state(cfgs[0]) == "failed"

    outcomes = LocalSweep(cfgs, jobs=2, retry_failed=True, log=lambda *_: None).run()
    assert outcomes == {"done": outcomes["done"]} and sorted(outcomes["done"]) == sorted(cfg.run_name for cfg in cfgs)
    assert f"resuming {b.path} at step {steps[1]}/96" in b.log.read_text()


DONE = dict(status="done", test_acc=0.5)
FAILED = dict(status="failed", reason="TrainingFailed: loss is nan")


@pytest.mark.parametrize("rc, summary, before, stopping, outcome", [
    (0, DONE, {}, False, "done"),
    # A stop signal that reached the process after it wrote its done summary, while it exited: the
    # run is finished (once, in CI, the campaign's budget stop turned such a run into a failure).
    (-signal.SIGTERM, DONE, {}, True, "done"),
    (-signal.SIGKILL, DONE, FAILED, False, "done"),  # a retried run: its new summary counts
    (EXIT_INTERRUPTED, {}, {}, True, "interrupted"),
    (-signal.SIGTERM, {}, {}, True, "interrupted"),  # stopped before it had set up its handler
    (EXIT_LOCKED, {}, {}, False, "running elsewhere"),
    (1, FAILED, {}, False, "failed"),
    (-signal.SIGKILL, {}, {}, False, "died"),  # the OOM killer, say: nothing recorded why
    (-signal.SIGKILL, FAILED, FAILED, False, "died"),  # a retried run killed: the old reason is not why
])
def test_a_runs_outcome_follows_from_its_exit_and_its_summary(rc, summary, before, stopping, outcome):
    assert classify(rc, summary, before, stopping) == outcome


def test_slurm_launcher_through_submitit_local_executor(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", grid={"train": ["bn", "output"]})
    out = tmp_path / "runs"
    assert main(["sweep", str(spec), "--out", str(out), "--launcher", "submitit-local", "--gpus-per-run", "0",
                 "--time", "10", "--wait"]) == 0
    shown = capsys.readouterr().out
    assert "submitted 2 runs" in shown and "2 done" in shown
    cfgs = expand(load_spec(spec), str(out))
    assert [RunDir(out / c.run_name).read_summary()["status"] for c in cfgs] == ["done", "done"]
    assert (out / ".submitit").is_dir()
    assert main(["sweep", str(spec), "--out", str(out), "--launcher", "submitit-local"]) == 0
    assert "nothing to submit: done 2" in capsys.readouterr().out


def test_slurm_executor_asks_for_the_options_and_the_preemption_signal(tmp_path, monkeypatch, capsys):
    spec = write_spec(tmp_path / "s.yaml", grid={"seed": [0]})
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no Slurm here: a clear error, not a traceback
    assert main(["sweep", str(spec), "--launcher", "slurm"]) == 2
    assert "needs Slurm (no srun on PATH)" in capsys.readouterr().err
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    executor = slurm.slurm_executor(tmp_path / "submitit", partition="gpu", time_min=120, gpus_per_run=2,
                                    cpus_per_run=16, mem_gb=64, max_parallel=8, options={"account": "proj"})
    sbatch = executor._executor._make_submission_file_text("CMD", "0")
    for line in ("--partition=gpu", "--time=120", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=8",
                 "--mem=64GB", "--account=proj", "--signal=USR2@90"):
        assert f"#SBATCH {line}\n" in sbatch
    assert executor._executor.parameters["array_parallelism"] == 8 and executor._executor.max_num_timeout == 20
