"""A run's life: refuse bad input, build, take the run's lock, resume or start, train, summarize.

Any error after the run folder is set up is recorded in summary.json (status "failed", the reason
and the traceback's tail) before it propagates; a signal (Interrupted) is not a failure, nor is an
output folder that stopped taking writes (the last good checkpoint is intact, launch again).
"""

from __future__ import annotations

import traceback

from .. import distributed, formats
from ..config import TrainConfig
from ..errors import ConfigError, Interrupted, OutputError, TrainingFailed
from ..rundir import RunDir, atomic_torch_save, check_writable
from ..trainable import plain_state_dict, score_state_dict
from .build import Built, build
from .callbacks import Callback
from .counting import count_summary
from .loop import Trainer, default_callbacks


def train(cfg: TrainConfig, log=print, *, default_threads: int | None = None,
          callbacks: list[Callback] = ()) -> dict:
    """Train (or resume, or just report) the run ``cfg`` describes; returns its summary.

    Bad input is refused before anything is written: the config's fields on construction, an
    output folder that cannot be written, then (in :func:`build`) whatever needs the data. A
    resumed run keeps the compute settings it started with (:mod:`bnonly.compute`).
    ``default_threads``: CPU threads when neither the config nor the run's record sets them.
    ``callbacks``: more loop callbacks (:mod:`bnonly.training.callbacks`), run after Metrics.

    Under torchrun every rank calls this with the same config: each trains on its shard, rank 0
    holds the run's lock, logs and writes every file, and all ranks resume from the same checkpoint.
    """
    joined = distributed.join(cfg.device)
    try:
        run = RunDir(f"{cfg.out}/{cfg.run_name}")
        if run.is_done():
            return _report_done(run, log)
        check_writable(run.path, "--out")
        built = build(cfg, recorded_compute=run.recorded_compute(), default_threads=default_threads)
        with distributed.held_by_main(run.lock):
            if run.is_done():  # finished by another process while this one was building
                return _report_done(run, log)
            return _train_locked(cfg, built, run, log if distributed.world().is_main else _quiet, list(callbacks))
    finally:
        if joined:
            distributed.leave()


def bn_statistics(cfg: TrainConfig) -> dict:
    """Which BatchNorm statistics the run normalized with, in training and in its evaluations."""
    return dict(train="running statistics frozen at their initial values" if cfg.bn_stats == "frozen" else "batch",
                eval=f"recalibrated over {cfg.recalibrate_bn} training batches" if cfg.recalibrate_bn
                else "running averages")


def _quiet(*_):
    pass


def _report_done(run: RunDir, log) -> dict:
    summary = run.read_summary()
    log(f"run {run.path} already finished: test acc {summary['test_acc']:.4f}")
    return summary


def _train_locked(cfg: TrainConfig, built: Built, run: RunDir, log, extra: list[Callback]) -> dict:
    main = distributed.world().is_main
    trainer = Trainer(cfg, built, run, log, default_callbacks(cfg, extra))
    state, warnings = run.load_checkpoint(map_location=built.device, quarantine=main)
    for w in warnings:
        log(f"warning: {w}")
    if state is not None:
        recorded, now = state.get("compute"), built.compute.to_dict()
        if recorded is not None and any(now.get(k) != v for k, v in recorded.items()):
            raise ConfigError(f"{run.path} was checkpointed by another process while this launch was starting "
                              f"(compute settings {recorded}); launch it again")
        trainer.load_state(state)
        log(f"resuming {run.path} at step {trainer.step}/{trainer.total_steps}")
        if built.compute_note:
            log(built.compute_note)
    elif main:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_metrics([])
        run.write_config(cfg.to_dict())
        atomic_torch_save(run.init_weights, plain_state_dict(built.model))
    base = dict(run_id=cfg.run_id, run_dir=str(run.path), model=cfg.model, train=cfg.train, seed=cfg.seed,
                epochs=cfg.epochs, data=cfg.data, device=str(built.device), compute=built.compute.to_dict(),
                bn_statistics=bn_statistics(cfg),
                world_size=trainer.world.world_size, **count_summary(built.model))
    try:
        last = trainer.fit()
    except (Interrupted, OutputError):
        raise
    except Exception as e:
        if main:
            reason = str(e) if isinstance(e, TrainingFailed) else f"{type(e).__name__}: {e}"
            run.write_summary(dict(base, status="failed", reason=reason, wall_seconds=trainer.wall,
                                   traceback=traceback.format_exc().splitlines()[-12:]))
        raise
    summary = formats.stamped("summary", dict(
        base, status="done", test_acc=last["test_acc"], test_top5=last["test_top5"], test_loss=last["test_loss"],
        train_loss=last["train_loss"], steps=trainer.step, wall_seconds=round(trainer.wall, 3),
        images_per_second=last["images_per_second"]))
    if trainer.finished_early:
        summary["finished_early"] = trainer.finished_early
    if main:
        atomic_torch_save(run.final_weights, plain_state_dict(built.model))
        scores = score_state_dict(built.model)
        if scores:  # a supermask run: what trained is not in final.pt (its masked weights are)
            atomic_torch_save(run.scores, scores)
        run.write_summary(summary)
        run.checkpoint.unlink(missing_ok=True)
        run.previous_checkpoint.unlink(missing_ok=True)
    return summary
