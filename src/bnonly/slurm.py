"""Sweeps on Slurm through submitit: one job array, one job per run, checkpoint-and-requeue.

Each job calls :class:`RunTask`, which trains its run in the job's process exactly as a local
sweep does (lock, resume, failure record: :func:`bnonly.sweep.attempt`). Before a time limit,
or when preempted, Slurm sends SIGUSR2 (submitit asks for it): the training loop stops at the
next step and writes a checkpoint, then RunTask passes the signal on to submitit's handler,
which calls :meth:`RunTask.checkpoint` (the same run, resubmitted) and requeues the job; the
next attempt resumes from the checkpoint. With several tasks per run, submitit's
TorchDistributedEnvironment sets what torchrun would, and the run trains with DDP.
"""

from __future__ import annotations

import signal
from pathlib import Path

from . import config as cfgmod
from .errors import Interrupted
from .extras import require
from .sweep import SweepError, attempt


class RunTask:
    """A submitit job: train one run (given as its config dict, so the pickle is plain data)."""

    def __init__(self, config: dict):
        self.config = config

    def __call__(self) -> dict:
        import submitit


        if submitit.JobEnvironment().num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        try:
            return attempt(cfgmod.from_dict(self.config))
        except Interrupted as e:
            if e.signal_name == "SIGUSR2":  # the checkpoint is saved: let submitit requeue (it exits)
                signal.raise_signal(signal.SIGUSR2)
            raise

    def checkpoint(self):
        """What submitit requeues: the same run, which resumes from its checkpoint."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(RunTask(self.config))


def slurm_executor(folder: str | Path, *, partition: str | None = None, time_min: int = 24 * 60,
                   gpus_per_run: int = 1, tasks_per_run: int | None = None, cpus_per_run: int | None = None,
                   mem_gb: float | None = None, max_parallel: int | None = None, max_requeues: int = 20,
                   options: dict | None = None):
    """A submitit executor for Slurm; ``options`` are further submitit Slurm parameters (account, qos...)."""
    import shutil

    submitit = require("submitit", "--launcher slurm")
    if shutil.which("srun") is None:
        raise SweepError("--launcher slurm needs Slurm (no srun on PATH): run it on the cluster's login node, "
                         "or try the same jobs here with --launcher submitit-local")
    tasks = tasks_per_run or max(gpus_per_run, 1)
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=max_requeues)
    params = dict(name="bnonly", timeout_min=time_min, nodes=1, tasks_per_node=tasks, gpus_per_node=gpus_per_run,
                  cpus_per_task=max(1, cpus_per_run // tasks) if cpus_per_run else None, mem_gb=mem_gb,
                  slurm_partition=partition, slurm_array_parallelism=max_parallel)
    params.update({f"slurm_{k}": v for k, v in (options or {}).items()})
    executor.update_parameters(**params)
    return executor


def local_executor(folder: str | Path, *, time_min: float = 24 * 60, gpus_per_run: int = 0,
                   tasks_per_run: int | None = None, max_requeues: int = 20, signal_delay_s: int = 90):
    """submitit's local executor with the Slurm launcher's settings: the same jobs, on this machine."""
    submitit = require("submitit", "--launcher submitit-local")
    executor = submitit.LocalExecutor(folder=folder, max_num_timeout=max_requeues)
    executor.update_parameters(timeout_min=time_min, gpus_per_node=gpus_per_run,
                               tasks_per_node=tasks_per_run or max(gpus_per_run, 1), signal_delay_s=signal_delay_s)
    return executor


def submit(cfgs: list[cfgmod.TrainConfig], executor) -> list:
    """Submit one job per run, as one array where the cluster has arrays; returns the jobs."""
    with executor.batch():
        jobs = [executor.submit(RunTask(cfg.to_dict())) for cfg in cfgs]
    return jobs


def outcome(job) -> str:
    """Wait for ``job``: the run's status (done, failed, running elsewhere), or 'error' if the job itself failed."""
    try:
        result = job.results()[0]
    except Exception:  # noqa: BLE001 - submitit re-raises whatever ended the job
        return "error"
    return result.get("status", "?") if isinstance(result, dict) else "?"
