"""The training loop: take steps, call the callbacks, hold the resumable state.

:class:`Trainer` owns what every run has (the step counter, the clocks, the optimizer, the
checkpoint format) and nothing else: evaluation, checkpointing, progress, the finite check,
signals and logging are callbacks (:mod:`bnonly.training.callbacks`). All randomness comes from
explicit seeds (initial weights, what-trains subsets, data order and augmentation per epoch), so
a run interrupted at any step and resumed ends bit-identical to one that never stopped.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager

import torch

from .. import distributed
from ..config import TrainConfig
from ..errors import ConfigError, Interrupted, OutputError
from ..rundir import RunDir
from ..trainable import trainable_parameters
from .build import Built
from .callbacks import LOGGERS, Callback, Checkpoint, FiniteCheck, Metrics, Progress, RecalibrateBN, StopOnSignal
from .graph_step import DeviceStep
from .objectives import OBJECTIVES
from .optimizers import OPTIMIZERS, param_groups
from .schedule import lr_at
from .step import TrainStep


def default_callbacks(cfg: TrainConfig, extra: list[Callback] = ()) -> list[Callback]:
    """The built-in callbacks in the order they run, with ``extra`` ones and ``--log`` backends
    after Metrics (so they see each new metrics row) and before the stop and checkpoint ones.
    ``--recalibrate-bn N`` puts RecalibrateBN just before Metrics, which evaluates."""
    loggers = [LOGGERS.get(name.strip())() for name in cfg.log.split(",") if name.strip()]
    recalibrate = [RecalibrateBN(cfg.recalibrate_bn)] if cfg.recalibrate_bn else []
    return [FiniteCheck(), Progress(cfg.progress), *recalibrate, Metrics(), *extra, *loggers, StopOnSignal(),
            Checkpoint()]


class Trainer:
    """Runs one configured training into its run folder: ``Trainer(cfg, built, run).fit()``."""

    def __init__(self, cfg: TrainConfig, built: Built, run: RunDir, log=print, callbacks: list[Callback] | None = None):
        self.cfg, self.built, self.run, self.log = cfg, built, run, log
        self.write = log  # Progress replaces it by its bar's write while the bar is shown
        self.world = distributed.world()
        self.device = built.device
        if cfg.sync_bn and self.world.distributed:
            built.model = distributed.sync_batchnorm(built.model, built.device)
        self.model = built.model
        self.params = trainable_parameters(self.model)
        # What the steps call: DDP (gradient all-reduce) when distributed and anything trains.
        net = distributed.wrap(self.model, self.device) if self.world.distributed and self.params else self.model
        self.optimizer = OPTIMIZERS.get(cfg.optimizer)(param_groups(self.model, cfg), cfg) if self.params else None
        self.steps_per_epoch = steps_per_epoch = built.train_batches.num_batches()
        step_kind = DeviceStep if built.compute.capture else TrainStep
        # The schedule closes over a local, not over self: a Trainer <-> step reference cycle would
        # keep DDP (and the process group its reducer holds) alive past train() until the garbage
        # collector or interpreter exit, where gloo's threads can abort the process.
        self.train_step = step_kind(net, self.optimizer, OBJECTIVES.get(cfg.loss), built.train_batches,
                                    device=self.device, bf16=built.bf16,
                                    lr_at_step=lambda i: lr_at(cfg, i / steps_per_epoch))
        self.total_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.eval_steps = {self.total_steps}  # eval_every 0: only at the end
        if cfg.eval_every > 0:
            every = max(1, round(cfg.eval_every * self.steps_per_epoch))
            self.eval_steps |= set(range(every, self.total_steps + 1, every))
        self.sync_every = 1 if self.device.type == "cpu" else 25
        self.callbacks = default_callbacks(cfg) if callbacks is None else callbacks
        self.step = self.saved_step = self.train_images = 0
        self.last_row = self.last_loss = None
        self.interrupted = self.finished_early = None
        self._wall0 = self._train_time0 = self._untimed = 0.0
        self._started = time.perf_counter()

    # --- clocks: wall time includes evaluation and saving, training time does not -------------
    @property
    def wall(self) -> float:
        return self._wall0 + time.perf_counter() - self._started

    @property
    def train_time(self) -> float:
        return self._train_time0 + time.perf_counter() - self._started - self._untimed

    @contextmanager
    def untimed(self):
        """Time spent inside does not count as training time (images/s)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._untimed += time.perf_counter() - t0

    def is_sync_step(self) -> bool:
        """Whether callbacks may read device values at this step without stalling a GPU."""
        return self.step % self.sync_every == 0 or self.step in self.eval_steps

    # --- control from callbacks --------------------------------------------------------------
    def interrupt(self, name: str) -> None:
        """Stop after this step's callbacks, with a checkpoint; raises Interrupted(name)."""
        self.interrupted = name

    def finish(self, reason: str) -> None:
        """End the run after this step as finished (a stopping rule); summary.json says why."""
        self.finished_early = reason

    # --- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict:
        """The resumable state (a collective when distributed: callbacks may sum over ranks)."""
        return dict(
            step=self.step, model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict() if self.optimizer else None,
            wall=self.wall, train_time=self.train_time, train_images=self.train_images,
            torch_rng=torch.get_rng_state(), run_id=self.cfg.run_id, world_size=self.world.world_size,
            compute=self.built.compute.to_dict(),
            callbacks={cb.name: cb.state_dict(self) for cb in self.callbacks if cb.name},
        )

    def load_state(self, state: dict) -> None:
        saved_world = state.get("world_size", 1)
        if saved_world != self.world.world_size and not self.cfg.sync_bn:
            raise ConfigError(
                f"{self.run.path} was checkpointed by {saved_world} process(es) and this launch has "
                f"{self.world.world_size}: with per-process BatchNorm statistics (no --sync-bn) that changes "
                f"the experiment; launch it with {saved_world} process(es)")
        self.model.load_state_dict(state["model"])
        if self.optimizer and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step = self.saved_step = state["step"]
        self._wall0, self._train_time0, self.train_images = state["wall"], state["train_time"], state["train_images"]
        torch.set_rng_state(state["torch_rng"])
        saved = state.get("callbacks")
        if saved is None and "win_n" in state:  # a checkpoint from before callbacks held their state
            saved = {"metrics": dict(loss=state["win_loss"], correct=state["win_correct"], n=state["win_n"])}
        for cb in self.callbacks:
            if cb.name and cb.name in (saved or {}):
                cb.load_state_dict(saved[cb.name], self)

    def save(self) -> None:
        state = self.state()
        if not self.world.is_main:
            return
        try:
            self.run.save_checkpoint(state)
        except OutputError as e:
            kept = (f"the last good checkpoint (step {self.saved_step}) is intact" if self.saved_step
                    else "no checkpoint was kept")
            raise OutputError(f"{e}; {kept}: fix the output folder and launch again to resume") from e
        self.saved_step = self.step

    # --- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to the end (or until a callback finishes or interrupts the run); returns the
        last metrics row."""
        self.model.train()
        self._started, self._untimed = time.perf_counter(), 0.0  # the clocks run from here, not from setup
        try:
            for cb in self.callbacks:
                cb.on_fit_start(self)
            while self.step < self.total_steps and not self.finished_early:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                for batch in self.train_step.epoch(epoch, start):
                    out = self.train_step(batch, self.step)
                    self.step += 1
                    self.train_images += out.n
                    for cb in self.callbacks:
                        cb.on_step_end(self, out)
                    if self.interrupted:
                        raise Interrupted(f"{self.interrupted} at step {self.step}/{self.total_steps}",
                                          self.interrupted)
                    if self.step >= self.total_steps or self.finished_early:
                        break
            for cb in self.callbacks:
                cb.on_fit_end(self)
        finally:
            for cb in self.callbacks:
                cb.close(self)
        return self.last_row or self.run.read_metrics()[-1]
