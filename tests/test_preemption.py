"""Preemption and faults: a stop signal at a random step, a kill while a checkpoint is written,
damaged checkpoints, and Slurm's SIGUSR2 + requeue through submitit's local executor. After each,
the run must end bit-identical to one that never stopped."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pytest
import torch
from conftest import QUIET, SignalAt

from bnonly import slurm
from bnonly.cli import main
from bnonly.config import from_dict
from bnonly.rundir import CheckpointError, RunDir
from bnonly.training import EXIT_INTERRUPTED, Interrupted, train

TINY = dict(conftest.TINY, epochs=4, milestones=(2, 3), schedule_epochs=4)
LONG = dict(TINY, epochs=12, eval_every=0.5, milestones=(8,), schedule_epochs=12)  # 96 steps: time to be killed


def cfg_at(root, base=TINY, **kw):
    # from_dict coerces like the CLI does (epochs=4 -> 4.0), so a child process's config names the same folder.
    return from_dict({**base, "out": str(root), **kw})


def finals_equal(a: RunDir, b: RunDir) -> bool:
    fa, fb = torch.load(a.final_weights), torch.load(b.final_weights)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_seconds", "images_per_second")} for r in rows]
    return all(torch.equal(fa[k], fb[k]) for k in fa) and strip(a.read_metrics()) == strip(b.read_metrics())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of the TINY and LONG configs."""
    root = tmp_path_factory.mktemp("reference")
    return {name: RunDir(train(cfg_at(root, base), **QUIET)["run_dir"])
            for name, base in (("tiny", TINY), ("long", LONG))}


@pytest.mark.compute
def test_stops_at_random_steps_resume_bit_identically(tmp_path, monkeypatch, reference):
    rng = random.Random(4)
    total = 4 * 8
    first = rng.randrange(1, total // 2)
    second = rng.randrange(first + 1, total)
    stops = SignalAt({first, second}, signal.SIGTERM)
    cfg = cfg_at(tmp_path)
    run = RunDir(tmp_path / cfg.run_name)
    for stop in (first, second):
        with pytest.raises(Interrupted, match=f"SIGTERM at step {stop}/{total}") as e:
            train(cfg, callbacks=[stops], **QUIET)
        assert e.value.signal_name == "SIGTERM"
        state, _ = run.load_checkpoint()
        assert state["step"] == stop and not run.summary.exists()
    assert train(cfg, **QUIET)["status"] == "done"
    assert finals_equal(run, reference["tiny"])


def test_external_sigterm_exits_75_and_the_next_launch_continues_exactly(tmp_path, reference):
    cfg = cfg_at(tmp_path, LONG)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    cmd = [sys.executable, "-m", "bnonly", "train", "--config", str(tmp_path / "c.json")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    run = RunDir(tmp_path / cfg.run_name)
    while not (run.metrics.exists() and run.metrics.read_text().strip()) and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(random.Random(7).uniform(0, 0.3))  # somewhere mid-run
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    state, _ = run.load_checkpoint()
    assert 0 < state["step"] < 96 and f"SIGTERM at step {state['step']}/96" in err
    assert main(cmd[3:]) == 0  # the next launch, in this process
    assert finals_equal(run, reference["long"])


DYING_WRITE = """
import os, signal, sys
from bnonly import rundir
original, saves = rundir.atomic_write_bytes, []
def dying(path, write, **kw):
    if path.name == "checkpoint.pt":
        saves.append(path)
        if len(saves) == 2:  # the second checkpoint: half of it reaches the disk, then SIGKILL
            class Half:
                def __init__(self, f): self.f = f
                def write(self, b):
                    self.f.write(bytes(b)[: len(b) // 2]); self.f.flush(); os.kill(os.getpid(), signal.SIGKILL)
            return original(path, lambda f: write(Half(f)), **kw)
    return original(path, write, **kw)
rundir.atomic_write_bytes = dying
from bnonly.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path, reference, capsys):
    cfg = cfg_at(tmp_path)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    r = subprocess.run([sys.executable, "-c", DYING_WRITE, "train", "--config", str(tmp_path / "c.json")],
                       capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL
    run = RunDir(tmp_path / cfg.run_name)
    # The new file is written in full before the old one is rotated: the latest good one is untouched.
    assert run.checkpoint.exists() and not run.previous_checkpoint.exists()
    assert glob.glob(str(run.path / ".checkpoint.pt.*.tmp"))  # the half-written file
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "at step 8/" in out and "warning" not in out
    assert not glob.glob(str(run.path / ".*.tmp"))  # cleaned once the lock was taken
    assert finals_equal(run, reference["tiny"])


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":  # a silent bit flip in the tensor data: torch.load alone would load it
        data[len(data) * 2 // 3] ^= 0x10
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_checkpoint_is_reported_and_the_previous_one_used(tmp_path, monkeypatch, reference, how):
    cfg = cfg_at(tmp_path)
    with pytest.raises(Interrupted):  # in epoch 3: checkpoint.pt at step 21, checkpoint.prev.pt at step 16
        train(cfg, callbacks=[SignalAt({21}, signal.SIGTERM)], **QUIET)
    run = RunDir(tmp_path / cfg.run_name)
    damage(run.checkpoint, how)
    messages = []
    assert train(cfg, log=messages.append)["status"] == "done"
    text = "\n".join(messages)
    assert f"checkpoint {run.checkpoint} is unreadable" in text
    assert "SHA-256 mismatch" in text  # truncation too: the checksum covers every byte
    assert "resuming from the older checkpoint checkpoint.prev.pt (step 16)" in text
    assert (run.path / "checkpoint.pt.corrupt").exists()
    assert finals_equal(run, reference["tiny"])


def test_every_checkpoint_damaged_is_an_error_not_a_silent_restart(tmp_path, monkeypatch, capsys):
    cfg = cfg_at(tmp_path)
    with pytest.raises(Interrupted):
        train(cfg, callbacks=[SignalAt({21}, signal.SIGTERM)], **QUIET)
    run = RunDir(tmp_path / cfg.run_name)
    damage(run.checkpoint, "flip")
    damage(run.previous_checkpoint, "truncate")
    with pytest.raises(CheckpointError, match="every checkpoint .* is unreadable"):
        train(cfg, **QUIET)
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["train", "--config", str(tmp_path / "c.json")]) == 2
    assert "Delete the run folder to start over" in capsys.readouterr().err
    assert json.loads(run.metrics.read_text().splitlines()[0])["step"] == 8  # nothing was overwritten


def test_slurm_preemption_signal_checkpoints_requeues_and_resumes(tmp_path, reference):
    cfg = cfg_at(tmp_path / "runs", LONG)
    executor = slurm.local_executor(tmp_path / "submitit", time_min=10, tasks_per_run=1, max_requeues=3)
    (job,) = slurm.submit([cfg], executor)
    run = RunDir(tmp_path / "runs" / cfg.run_name)
    deadline = time.time() + 60
    while not (run.metrics.exists() and run.metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.01)
    holder = int(run.lock_file.read_text().split("pid")[1])  # the job's process, training the run
    os.kill(holder, signal.SIGUSR2)  # what Slurm sends before a time limit or on preemption
    assert slurm.outcome(job) == "done"
    out = job.stdout()
    assert "Requeued job" in out and "resuming" in out and "SIGUSR2" in out
    assert finals_equal(run, reference["long"])
