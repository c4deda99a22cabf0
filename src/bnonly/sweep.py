"""Sweeps: a YAML grid of runs, trained on this machine (``--jobs N``) or as a Slurm job array.

A spec file holds a ``base:`` mapping of config fields shared by every run, a ``grid:`` mapping of
field -> list of values (the runs are the product), or a list of such mappings (the union of
their products), and optionally a ``preset:``::

    base: {data: ../shared/data/cifar10-jpeg, epochs: 10}
    grid: {model: [cifar_resnet_14, cifar_resnet_32], train: [bn, all], seed: [0, 1]}

Every run is the ordinary content-addressed run folder ``bnonly train`` makes, so launching a
sweep again skips finished runs and resumes interrupted ones, and a run is the same run whether
a sweep or a hand-typed ``bnonly train`` made it. Each run holds its folder's lock while it
trains, so sweeps over one folder never train a run twice; a run that fails is recorded as
failed (summary.json: reason, traceback or log tail) and the others go on.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import config as cfgmod
from .errors import EXIT_INTERRUPTED, EXIT_LOCKED, BnonlyError, Interrupted, RunLocked
from .host import usable_cores
from .rundir import RunDir
from .training import STOP_SIGNALS, train

SPEC_KEYS = ("preset", "base", "grid")
STATES = ("done", "running", "failed", "pending")


class SweepError(BnonlyError, ValueError):
    """A sweep spec that cannot be expanded into runs."""


@dataclass
class Spec:
    base: dict[str, Any] = field(default_factory=dict)
    grids: list[dict[str, list]] = field(default_factory=lambda: [{}])
    preset: str | None = None


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    raw = cfgmod.read_yaml(p, "sweep file", SweepError)
    if not isinstance(raw, dict) or set(raw) - set(SPEC_KEYS):
        raise SweepError(f"sweep file {p} must be a mapping with keys {', '.join(SPEC_KEYS)}; "
                         f"got {sorted(raw) if isinstance(raw, dict) else type(raw).__name__}")
    base = raw.get("base") or {}
    grid = raw.get("grid") or {}
    grids = grid if isinstance(grid, list) else [grid]
    if not isinstance(base, dict) or not all(isinstance(g, dict) for g in grids):
        raise SweepError(f"in {p}, base: must be a mapping and grid: a mapping (or a list of mappings) "
                         "of field -> values")
    for g in grids:
        for name, values in g.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"in {p}, grid field '{name}' must be a non-empty list of values, got {values!r}")
    return Spec(base=base, grids=grids or [{}], preset=raw.get("preset"))


def expand(spec: Spec, out: str | None = None, check=None) -> list[cfgmod.TrainConfig]:
    """The spec's runs in grid order, duplicates (same run folder) dropped; ``out`` overrides base's.

    Every run is checked before any is returned (its config, then ``check(cfg)`` if given, e.g.
    :func:`bnonly.training.preflight`), and all the bad ones are reported at once in one SweepError.
    """
    runs, seen, bad, total = [], set(), [], 0
    for grid in spec.grids:
        names = list(grid)
        for values in itertools.product(*(grid[n] for n in names)):
            total += 1
            point = dict(zip(names, values))
            fields = {**spec.base, **point}
            if out is not None:
                fields["out"] = out
            try:
                cfg = cfgmod.resolve(spec.preset, None, **fields)
                if check is not None:
                    check(cfg)
            except BnonlyError as e:
                label = " ".join(f"{k}={v}" for k, v in point.items()) or "(base)"
                bad.append(f"  run {total} ({label}): {str(e).splitlines()[0]}")
                continue
            if cfg.run_name not in seen:
                seen.add(cfg.run_name)
                runs.append(cfg)
    if bad:
        raise SweepError(f"{len(bad)} of the sweep's {total} runs are invalid, so none was started; fix them:\n"
                         + "\n".join(bad))
    return runs


def run_dir(cfg: cfgmod.TrainConfig) -> RunDir:
    return RunDir(f"{cfg.out}/{cfg.run_name}")


def state(cfg: cfgmod.TrainConfig) -> str:
    """done, running (a process holds the run's lock), failed (recorded), or pending."""
    run = run_dir(cfg)
    summary = run.read_summary() or {}
    if summary.get("status") == "done":
        return "done"
    if run.is_locked():
        return "running"
    return "failed" if summary.get("status") == "failed" else "pending"


def record_failure(cfg: cfgmod.TrainConfig, reason: str, details: list[str]) -> None:
    """Mark a run failed when its process could not (it crashed before setting up, or was killed)."""
    run = run_dir(cfg)
    with run.lock():
        run.write_summary(dict(
            status="failed", reason=reason, details=details, run_id=cfg.run_id, run_dir=str(run.path),
            model=cfg.model, train=cfg.train, seed=cfg.seed, epochs=cfg.epochs, data=cfg.data))


def attempt(cfg: cfgmod.TrainConfig, default_threads: int | None = None) -> dict:
    """Train ``cfg`` in this process as a sweep job: returns its summary; a failure is recorded
    in the run folder and returned, not raised (a stop signal still raises Interrupted).
    ``default_threads``: this job's share of the CPU cores, unless the run sets or recorded its own."""
    run = run_dir(cfg)
    before = run.read_summary()
    try:
        return train(cfg, default_threads=default_threads)
    except RunLocked as e:
        return dict(status="running elsewhere", reason=str(e), run_dir=str(run.path))
    except Interrupted:
        raise
    except Exception as e:  # noqa: BLE001 - any error fails this run only
        if int(os.environ.get("RANK", "0")) == 0 and run.read_summary() == before:  # not recorded by train()
            record_failure(cfg, f"{type(e).__name__}: {e}", traceback.format_exc().splitlines()[-12:])
        return run.read_summary()


def status(cfgs: list[cfgmod.TrainConfig]) -> dict:
    """Counts per state, failures with their reasons, and what runs where."""
    by_state: dict[str, list] = {s: [] for s in STATES}
    for cfg in cfgs:
        by_state[state(cfg)].append(cfg)
    resumable = sum(map(_has_checkpoint, by_state["pending"]))
    failures = [dict(run=c.run_name, reason=(run_dir(c).read_summary() or {}).get("reason", "?"),
                     run_dir=str(run_dir(c).path)) for c in by_state["failed"]]
    running = [dict(run=c.run_name, holder=_holder(run_dir(c)), progress=progress(c)) for c in by_state["running"]]
    stopped = [dict(run=c.run_name, progress=p) for c in by_state["pending"]
               if _has_checkpoint(c) and (p := progress(c))]
    return dict(counts={s: len(v) for s, v in by_state.items()}, resumable=resumable,
                failures=failures, running=running, stopped=stopped)


#: How many of the latest evaluations the pace of a run is taken from.
PACE_WINDOW = 5


def progress(cfg: cfgmod.TrainConfig) -> dict | None:
    """How far a started run is, from its metrics: the last evaluated epoch out of the run's, the
    pace in seconds an epoch (median over the latest PACE_WINDOW evaluations, so that one interval
    spanning a pause or a restart does not set it) and the time left at that pace. None before the
    first evaluation. For long runs that span sessions: how far they got and when they will end."""
    rows = [r for r in run_dir(cfg).read_metrics() if "epoch" in r and "wall_seconds" in r]
    if not rows:
        return None
    recent = rows[-(PACE_WINDOW + 1):]
    paces = sorted((b["wall_seconds"] - a["wall_seconds"]) / (b["epoch"] - a["epoch"])
                   for a, b in zip(recent, recent[1:]) if b["epoch"] > a["epoch"])
    epoch = rows[-1]["epoch"]
    if paces:
        pace = paces[len(paces) // 2]
    elif epoch > 0:  # one evaluation so far: the pace since the start
        pace = rows[-1]["wall_seconds"] / epoch
    else:
        return dict(epoch=epoch, epochs=cfg.epochs, seconds_per_epoch=None, seconds_left=None)
    left = max(0.0, cfg.epochs - epoch) * pace
    return dict(epoch=epoch, epochs=cfg.epochs, seconds_per_epoch=pace, seconds_left=left)


def _has_checkpoint(cfg: cfgmod.TrainConfig) -> bool:
    return run_dir(cfg).checkpoint.exists() or run_dir(cfg).previous_checkpoint.exists()


def _holder(run: RunDir) -> str:
    try:
        return run.lock_file.read_text().strip()
    except OSError:
        return "?"


# --- the local launcher -------------------------------------------------------------------

class LocalSweep:
    """Runs a sweep's runs on this machine, ``jobs`` at a time, each in its own process (so a
    crash, even a segfault, fails that run only) with its output in the run's train.log. The
    processes fork from a multiprocessing forkserver that imported torch once, so a run starts in
    milliseconds, not the seconds a fresh interpreter takes. CPU threads are split evenly; with
    GPUs, slot k uses GPU k mod #GPUs (:func:`gpu_of_slot`), so ``jobs = K x #GPUs`` trains K runs on
    every GPU at once (``bnonly sweep --runs-per-gpu K``): separate processes, each its own CUDA
    context, which the GPU time-slices (or runs concurrently under CUDA MPS).

    A stop signal to this process is passed on to the running runs (they checkpoint), no new
    run starts, and :meth:`run` returns with the interrupted ones counted.
    """

    def __init__(self, cfgs: list[cfgmod.TrainConfig], jobs: int = 1, retry_failed: bool = False, log=print):
        import multiprocessing

        if jobs < 1:
            raise SweepError(f"--jobs must be at least 1, got {jobs}")
        self.cfgs, self.jobs, self.retry_failed, self.log = cfgs, jobs, retry_failed, log
        self.threads = max(1, usable_cores() // jobs)
        self.gpus = gpu_count()
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["bnonly.training"])
        self.stopping = None
        self._procs: dict[int, object] = {}
        self._lock = threading.Lock()
        self._free = list(range(jobs))

    def run(self) -> dict[str, list[str]]:
        """Train what is pending; returns run names per outcome (done, failed, interrupted, skipped...)."""
        outcomes: dict[str, list[str]] = {}
        todo = []
        for cfg in self.cfgs:
            s = state(cfg)
            if s == "pending" or (s == "failed" and self.retry_failed):
                todo.append(cfg)
            else:
                outcomes.setdefault({"done": "already done", "running": "running elsewhere",
                                     "failed": "failed before (--retry-failed retries)"}[s], []).append(cfg.run_name)
        self.log(", ".join([f"{len(self.cfgs)} runs: {len(todo)} to train ({self.jobs} at a time)"]
                           + [f"{len(v)} {k}" for k, v in outcomes.items()]))
        # Signal handlers exist in the main thread only; elsewhere the caller handles stopping.
        main = threading.current_thread() is threading.main_thread()
        old = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS} if main else {}
        try:
            with ThreadPoolExecutor(self.jobs) as pool:
                futures = {pool.submit(self._one, cfg): cfg for cfg in todo}
                for i, future in enumerate(as_completed(futures), 1):
                    outcome, note = future.result()
                    outcomes.setdefault(outcome, []).append(futures[future].run_name)
                    if outcome != "not started":
                        self.log(f"[{i}/{len(todo)}] {outcome:<11} {futures[future].run_name}  {note}")
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        return outcomes

    def _on_signal(self, signum, frame):
        self.stopping = signum
        with self._lock:
            for proc in self._procs.values():
                os.kill(proc.pid, signum)

    def _one(self, cfg: cfgmod.TrainConfig) -> tuple[str, str]:
        with self._lock:
            if self.stopping:
                return "not started", ""
            slot = self._free.pop()
            run = run_dir(cfg)
            run.path.mkdir(parents=True, exist_ok=True)
            before = run.read_summary()
            gpu = gpu_of_slot(slot, self.gpus)
            proc = self.context.Process(target=_child, args=(cfg.replace(progress=False).to_dict(), str(run.log), gpu,
                                                             self.threads),
                                        name=cfg.run_name)
            started = time.perf_counter()
            proc.start()
            self._procs[slot] = proc
        proc.join()
        with self._lock:
            del self._procs[slot]
            self._free.append(slot)
        rc, seconds = proc.exitcode, f"{time.perf_counter() - started:.1f} s"
        summary = run.read_summary() or {}
        outcome = classify(rc, summary, before or {}, bool(self.stopping))
        if outcome == "done":
            return "done", f"test_acc {summary['test_acc']:.4f}  {seconds}"
        if outcome == "interrupted":
            return "interrupted", seconds
        if outcome == "running elsewhere":
            return "running elsewhere", ""
        if outcome == "died":  # the process died before recording why
            why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit code {rc}"
            tail = _tail(run.log)
            record_failure(cfg, f"{why}: {tail[-1] if tail else 'no output'}", tail)
            summary = run.read_summary() or {}
        return "failed", f"{summary.get('reason', '?')}  (log: {run.log})"


def classify(rc: int, summary: dict, before: dict, stopping: bool) -> str:
    """What a run's process came to, from its exit code and its summary.json before and after:
    done, interrupted, running elsewhere, failed (the run recorded why) or died (it did not).

    A done summary is written last, after the final weights, so it decides whatever the exit
    code: a stop signal that arrives while the process exits (interpreter shutdown takes a
    moment) kills it with the run finished, and must not turn that run into a failure."""
    if summary.get("status") == "done" and summary != before:
        return "done"
    if rc == EXIT_INTERRUPTED or (stopping and summary == before):  # or stopped while starting
        return "interrupted"
    if rc == EXIT_LOCKED:
        return "running elsewhere"
    if summary == before or summary.get("status") != "failed":
        return "died"
    return "failed"


def _child(config: dict, log: str, gpu: str | None, threads: int) -> None:
    """One run in a forked process: output to the run's train.log, exit code as ``bnonly train``'s."""
    os.setsid()  # its own session: a Ctrl-C reaches the sweep, which passes it on exactly once
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    print(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} bnonly sweep, pid {os.getpid()}", flush=True)
    try:
        summary = attempt(cfgmod.from_dict(config), default_threads=threads) or {}
    except Interrupted as e:
        print(f"interrupted ({e}); checkpoint saved", flush=True)
        sys.exit(EXIT_INTERRUPTED)
    if summary.get("status") != "done":
        print(f"run {summary.get('status')}: {summary.get('reason')}", flush=True)
    sys.exit({"done": 0, "running elsewhere": EXIT_LOCKED}.get(summary.get("status"), 1))


def _tail(path: Path, lines: int = 12) -> list[str]:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return [line for line in text if line.strip()][-lines:]


def gpu_of_slot(slot: int, gpus: int) -> str | None:
    """The GPU (as CUDA_VISIBLE_DEVICES) of launcher slot ``slot``: round robin, None without GPUs."""
    return str(slot % gpus) if gpus else None


def jobs_for(jobs: int | None, runs_per_gpu: int | None, gpus: int) -> int:
    """How many runs a local sweep trains at once: ``--jobs``, or ``--runs-per-gpu`` x the GPUs."""
    if runs_per_gpu is None:
        return jobs or 1
    if jobs is not None:
        raise SweepError("give --jobs or --runs-per-gpu, not both")
    if not gpus:
        raise SweepError("--runs-per-gpu needs a GPU and this machine has none; use --jobs N for N runs on the CPU")
    return runs_per_gpu * gpus


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
