"""Callbacks: everything the training loop does besides taking steps.

The loop (:class:`bnonly.training.Trainer`) takes a step, then calls ``on_step_end(loop, out)`` on
each callback in order. The built-ins, in the order the loop runs them:

====================  ========================================================================
``FiniteCheck``       reads the loss every ``sync_every`` steps and at evaluations; a NaN/inf
                      loss ends the run as failed (the one host sync of a CPU-cheap step)
``Progress``          the progress bar (loss, img/s)
``Metrics``           the training loss/accuracy window between evaluations; evaluates on the
                      test set every ``eval_every`` epochs and at the end, appends the row to
                      metrics.jsonl, and hands it to the logging callbacks
(your callbacks)      passed to ``train(cfg, callbacks=[...])``
``TensorBoard``       ``--log tensorboard``: the same rows as TensorBoard scalars
``StopOnSignal``      SIGINT/SIGTERM/SIGUSR2 become a stop at this step (agreed on by all ranks)
``Checkpoint``        saves the resumable state every epoch and when stopping
====================  ========================================================================

A callback that keeps state across steps returns it from ``state_dict(loop)`` (plain tensors and
numbers; every rank calls it, so it may be a collective), and it is saved in every checkpoint
under the callback's ``name`` and given back by ``load_state_dict(state, loop)`` on resume, so a resumed run continues
bit for bit. Heavy work (evaluation, saving) runs inside ``loop.untimed()`` so that it does not count as training time.

Hooks: ``on_fit_start(loop)`` once per launch (also after a resume), ``on_step_end(loop, out)``
after every step, ``on_fit_end(loop)`` when the last step is done, ``close(loop)`` always (also on
errors and interrupts). ``loop.finish(reason)`` from a callback ends the run early as done (a
stopping rule); ``loop.interrupt(name)`` stops it with a checkpoint, to resume later.
"""

from __future__ import annotations

import math
import signal
import sys

import torch

from .. import distributed
from ..errors import TrainingFailed
from ..layers import RUNNING_STATS_TYPES, layers_of
from ..registry import Registry
from .evaluate import autocast, evaluate
from .schedule import lr_at

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
"""Signals that stop training at the next step with a checkpoint. SIGUSR2 is what Slurm sends
(through submitit) before a time limit or preemption."""


class Callback:
    """Base class: every hook is a no-op. ``name``: the key of its state in checkpoints ("" for none)."""

    name = ""

    def on_fit_start(self, loop) -> None:
        pass

    def on_step_end(self, loop, out) -> None:
        pass

    def on_fit_end(self, loop) -> None:
        pass

    def close(self, loop) -> None:
        pass

    def state_dict(self, loop) -> dict:
        return {}

    def load_state_dict(self, state: dict, loop) -> None:
        pass


class FiniteCheck(Callback):
    """Stops a run whose loss is not finite. The check reads the loss from the device, so it runs
    at the loop's sync steps only (every step on the CPU, every 25 on a GPU, and at evaluations);
    it leaves the value in ``loop.last_loss`` for the progress bar."""

    def on_step_end(self, loop, out) -> None:
        if not loop.is_sync_step():
            return
        loss = out.loss
        value = float(distributed.all_sum(loss) / loop.world.world_size) if loop.world.distributed else loss.item()
        if not math.isfinite(value):
            raise TrainingFailed(f"non-finite training loss ({value}) at step {loop.step}; "
                                 "lower --lr or check the data")
        loop.last_loss = value


class Progress(Callback):
    """A tqdm bar on rank 0; quiet in log files (redrawn every 30 s instead of every step)."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def on_fit_start(self, loop) -> None:
        from tqdm.auto import tqdm

        interval = 0.5 if sys.stderr.isatty() else 30
        self.bar = tqdm(total=loop.total_steps, initial=loop.step, disable=not (self.enabled and loop.world.is_main),
                        unit="step", dynamic_ncols=True, leave=False, mininterval=interval)
        loop.write = self.bar.write

    def on_step_end(self, loop, out) -> None:
        if loop.is_sync_step() and loop.last_loss is not None:
            self.bar.update(loop.step - self.bar.n)
            ips = loop.train_images / max(loop.train_time, 1e-9)
            self.bar.set_postfix(loss=f"{loop.last_loss:.3f}", img_s=f"{ips:.0f}", refresh=False)

    def close(self, loop) -> None:
        if self.bar is not None:
            self.bar.close()
            loop.write = loop.log


class Metrics(Callback):
    """The training window (loss and accuracy since the last evaluation) and the evaluations.

    Its state is the window: summed over ranks when saved (a collective), carried by rank 0 on
    resume. Rows newer than the checkpoint a run resumes from are dropped from metrics.jsonl,
    since they will be written again."""

    name = "metrics"

    def __init__(self):
        self.last_eval_step = None
        self._reset(torch.device("cpu"))

    def _reset(self, device) -> None:
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.n = 0

    def on_fit_start(self, loop) -> None:
        self.loss, self.correct = self.loss.to(loop.device), self.correct.to(loop.device)

    def on_step_end(self, loop, out) -> None:
        self.loss += out.loss.double() * out.n
        self.correct += out.correct
        self.n += out.n
        if loop.step in loop.eval_steps:
            self.evaluate(loop)

    def on_fit_end(self, loop) -> None:
        if self.last_eval_step != loop.step:  # finished early, between evaluations
            self.evaluate(loop)

    def totals(self, loop):
        if not loop.world.distributed:
            return self.loss, self.correct, self.n
        t = distributed.all_sum(torch.stack([self.loss, self.correct.double(),
                                             torch.tensor(float(self.n), dtype=torch.float64, device=loop.device)]))
        return t[0], t[1].long(), int(t[2])

    def evaluate(self, loop) -> None:
        train_time, wall = loop.train_time, loop.wall  # up to this step: the evaluation is not training
        with loop.untimed():
            if loop.world.distributed:
                distributed.broadcast_buffers(loop.model)  # evaluate (and save) rank 0's running statistics
            result = evaluate(loop.model, loop.built.test_batches, bf16=loop.built.bf16, device=loop.device,
                              across_ranks=loop.world.distributed)
            loss, correct, n = self.totals(loop)
            row = dict(
                step=loop.step, epoch=round(loop.step / loop.steps_per_epoch, 4),
                lr=lr_at(loop.cfg, (loop.step - 1) / loop.steps_per_epoch),
                train_loss=float(loss) / max(n, 1), train_acc=int(correct) / max(n, 1), **result,
                wall_seconds=round(wall, 3),
                images_per_second=round(loop.train_images * loop.world.world_size / max(train_time, 1e-9), 1),
            )
            loop.last_row, self.last_eval_step = row, loop.step
            self._reset(loop.device)
            if loop.world.is_main:
                loop.run.append_metrics(row)
                loop.write(f"epoch {row['epoch']:g}/{loop.cfg.epochs:g}  train loss {row['train_loss']:.4f} "
                           f"acc {row['train_acc']:.4f}  test acc {row['test_acc']:.4f} top5 {row['test_top5']:.4f}"
                           f"  {row['images_per_second']:.0f} img/s")

    def state_dict(self, loop) -> dict:
        loss, correct, n = self.totals(loop)
        return dict(loss=loss.cpu(), correct=correct.cpu(), n=n)

    def load_state_dict(self, state: dict, loop) -> None:
        if loop.world.is_main:  # the saved window is the sum over ranks: rank 0 carries it
            self.loss, self.correct, self.n = state["loss"], state["correct"], state["n"]
            loop.run.write_metrics([m for m in loop.run.read_metrics() if m["step"] <= loop.step])
        self.last_eval_step = None


class RecalibrateBN(Callback):
    """PreciseBN: before each evaluation, BatchNorm running statistics are recomputed as the plain
    average over ``batches`` training batches (training mode, no gradients), instead of the
    exponential running averages that training left.

    The batches are the first ``batches`` of a calibration epoch drawn from the run's seed and the
    current step (epoch number ``CALIBRATION_EPOCH + step``), so a resumed run recalibrates on the
    same images. Training itself is unaffected: it normalizes with batch statistics, and the
    running statistics only continue from the recalibrated values.
    """

    CALIBRATION_EPOCH = 10**9

    def __init__(self, batches: int):
        self.batches = batches

    def on_step_end(self, loop, out) -> None:
        if loop.step in loop.eval_steps:
            self.recalibrate(loop)

    def on_fit_end(self, loop) -> None:
        if loop.finished_early and loop.step not in loop.eval_steps:
            self.recalibrate(loop)

    @torch.no_grad()
    def recalibrate(self, loop) -> None:
        bns = [m for _, m in layers_of(loop.model, RUNNING_STATS_TYPES) if m.track_running_stats]
        if not bns:
            return
        with loop.untimed():
            saved = [(m.momentum, m.training) for m in bns]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # None: a cumulative (plain) average over the batches seen
            batches = loop.built.train_batches.batches(self.CALIBRATION_EPOCH + loop.step)
            with autocast(loop.device, loop.built.bf16), torch.compiler.set_stance("force_eager"):
                for _, (x, _) in zip(range(self.batches), batches):
                    loop.model(x)
            for m, (momentum, training) in zip(bns, saved):
                m.momentum = momentum
                m.train(training)


class StopOnSignal(Callback):
    """Turns STOP_SIGNALS into a stop at the end of the current step, with a checkpoint. When
    distributed, the ranks agree on the first rank's signal, so they all stop at the same step."""

    def __init__(self):
        self.received, self._old = None, {}

    def on_fit_start(self, loop) -> None:
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def on_step_end(self, loop, out) -> None:
        stop = distributed.first_signal(self.received) if loop.world.distributed else self.received
        if stop:
            loop.interrupt(stop)

    def close(self, loop) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class Checkpoint(Callback):
    """Saves the resumable state at the end of every epoch and when the loop is interrupted."""

    def on_step_end(self, loop, out) -> None:
        if loop.step % loop.steps_per_epoch == 0 or loop.interrupted:
            with loop.untimed():
                loop.save()


class TensorBoard(Callback):
    """Every metrics row as TensorBoard scalars in ``RUN_DIR/tensorboard/`` (rank 0). The writer
    queues events and a background thread writes them, so training never waits on it."""

    def __init__(self):
        self.writer, self.last = None, None

    def on_fit_start(self, loop) -> None:
        if not loop.world.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter  # preflight checked that tensorboard is installed

        self.writer = SummaryWriter(log_dir=str(loop.run.path / "tensorboard"), purge_step=loop.step + 1)

    def on_step_end(self, loop, out) -> None:
        row = loop.last_row
        if self.writer is None or row is None or row is self.last:
            return
        self.last = row
        for key, value in row.items():
            if key not in ("step", "epoch"):
                self.writer.add_scalar(key, value, global_step=row["step"])

    def close(self, loop) -> None:
        if self.writer is not None:
            self.writer.close()


LOGGERS: Registry = Registry("logging backend", "a Callback class taking no arguments, run after Metrics")
"""``--log NAME[,NAME]``: extra logging callbacks beside metrics.jsonl. An entry's ``requires`` names the
optional package it needs, checked before the run starts (bnonly.extras)."""
LOGGERS.register("tensorboard", TensorBoard, requires="tensorboard",
                 help="TensorBoard scalars in RUN_DIR/tensorboard (pip install 'bnonly[tensorboard]')")
