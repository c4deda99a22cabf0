"""Training runs: build everything from a TrainConfig, train, evaluate, checkpoint, resume.

The loop itself is deliberately thin (``Trainer.fit``): evaluation, checkpointing and
logging happen at step boundaries it exposes. All randomness comes from explicit seeds
(initial weights, what-trains subsets, data order and augmentation per epoch), so a run
interrupted at any step and resumed ends bit-identical to one that never stopped.
"""

from __future__ import annotations

import math
import signal
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import compute
from . import config as cfgmod
from . import distributed, speed
from .data import DataError, make_batches, open_dataset
from .errors import EXIT_INTERRUPTED, EXIT_LOCKED, ConfigError, Interrupted, OutputError, TrainingFailed
from .models import create_model
from .rundir import RunDir, atomic_torch_save, atomic_write_json, check_writable
from .trainable import (TrainableEntries, bn_param_count, configure, output_layer, parse_spec, plain_state_dict,
                        trainable_parameters)

__all__ = ["EXIT_INTERRUPTED", "EXIT_LOCKED", "Interrupted", "TrainingFailed", "build", "train"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
"""Signals that stop training at the next step with a checkpoint. SIGUSR2 is what Slurm sends
(through submitit) before a time limit or preemption."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu")
    return device


def has_thin_strided_1x1_conv(model: nn.Module) -> bool:
    """Whether the model has a 1x1 strided convolution with fewer than 8 input channels.

    On the CPU, PyTorch 2.13's backward of such a convolution in channels_last corrupts the
    heap ("corrupted size vs. prev_size", then a crash) at one thread; a ResNet's downsampling
    shortcut is one when the width is below 8. Such models train in NCHW on the CPU.
    """
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.in_channels < 8
               for m in model.modules())


def lr_at(cfg: cfgmod.TrainConfig, progress_epochs: float) -> float:
    """Warmup then step decay, with milestones scaled from schedule_epochs to epochs."""
    e = progress_epochs * cfg.schedule_epochs / cfg.epochs
    if cfg.warmup_epochs and e < cfg.warmup_epochs:
        return cfg.lr * e / cfg.warmup_epochs
    return cfg.lr * cfg.lr_gamma ** sum(e >= m for m in cfg.milestones)


@dataclass
class Built:
    """Everything a run is made of, built from its config (the public API uses this too)."""

    model: nn.Module
    selection: object
    train_batches: object
    test_batches: object
    num_classes: int
    device: torch.device
    compute: compute.ComputeSettings
    compute_note: str | None = None
    """Set when a resumed run keeps recorded compute settings: the one line that says so."""

    @property
    def bf16(self) -> bool:
        return self.compute.bf16

    @property
    def channels_last(self) -> bool:
        return self.compute.channels_last


def preflight(cfg: cfgmod.TrainConfig, *, check_device: bool = True) -> None:
    """The checks that need neither the data's content nor a run folder (a sweep runs them on
    every run before training any): the model name, the what-trains spec, the device, and that
    the data path exists."""
    if check_device:
        resolve_device(cfg.device)
    create_model(cfg.model, cfg.num_classes, gamma_init=cfg.gamma_init, seed=None, device="meta")
    parse_spec(cfg.train)
    if not cfg.data:
        raise ConfigError(NO_DATA)
    if not (cfg.data == "synthetic" or cfg.data.startswith("synthetic:")) and not Path(cfg.data).expanduser().exists():
        raise DataError(f"data path '{cfg.data}' does not exist (resolved to {Path(cfg.data).expanduser().resolve()})")


NO_DATA = "no dataset given: pass --data PATH (a CIFAR folder/archive, an image folder, or 'synthetic')"


def build(cfg: cfgmod.TrainConfig, *, recorded_compute: dict | None = None,
          default_threads: int | None = None) -> Built:
    """Open the data, check the config against it, and build the model and batch sources.

    Nothing is written. ``recorded_compute``: the compute settings a resumed run started with
    (they win over this machine's defaults). ``default_threads``: threads to use when neither
    the config nor the record says (a sweep's share of the cores).
    """
    preflight(cfg)  # the cheap checks first: a bad model name is reported before the data is read
    device = resolve_device(cfg.device)
    dataset = open_dataset(cfg.data, cache_dir=cfg.cache_dir, crop_size=cfg.image_size)
    num_classes = _check_against_data(cfg, dataset)
    model = create_model(cfg.model, num_classes, gamma_init=cfg.gamma_init, seed=cfg.seed)
    _check_image_fits(model, cfg.model, dataset.train)
    nchw_only = None
    if device.type == "cpu" and has_thin_strided_1x1_conv(model):
        nchw_only = (f"{cfg.model} has a 1x1 stride-2 convolution with fewer than 8 input channels, whose channels_last "
                     "backward corrupts memory on the CPU (PyTorch 2.13), so it trains in NCHW there")
    settings, note = compute.resolve(
        dict(bf16=cfg.bf16, channels_last=cfg.channels_last, compile=cfg.compile, threads=cfg.threads),
        compute.Capabilities.of(device.type), recorded=recorded_compute, default_threads=default_threads,
        nchw_only=nchw_only)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    selection = configure(model, cfg.train, cfg.effective_selection_seed, bn_affine=cfg.bn_affine)
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    speed.prepare(model, device=device, bf16=settings.bf16, compile=settings.compile,
                  checkpoint_segments=cfg.checkpoint_activations)
    me = distributed.world()
    common = dict(seed=cfg.seed, device=device, normalize=cfg.normalize, channels_last=settings.channels_last,
                  num_workers=cfg.num_workers, rank=me.rank, world_size=me.world_size)
    train_batches = make_batches(dataset.train, batch_size=cfg.batch_size, train=True, augment=cfg.augment, **common)
    test_batch = max(cfg.batch_size, 500)
    test_batch += -test_batch % me.world_size  # a global batch every rank takes an equal slice of
    test_batches = make_batches(dataset.test, batch_size=test_batch, train=False, augment="none", **common)
    return Built(model, selection, train_batches, test_batches, num_classes, device, settings, note)


def _check_against_data(cfg: cfgmod.TrainConfig, dataset) -> int:
    """The checks that need the data; returns the number of output classes."""
    if cfg.num_classes is not None and cfg.num_classes < dataset.num_classes:
        raise ConfigError(f"num_classes={cfg.num_classes} is below the {dataset.num_classes} classes of {cfg.data} "
                          f"(labels 0-{dataset.num_classes - 1}): leave --num-classes out or give at least "
                          f"{dataset.num_classes}")
    if cfg.batch_size > len(dataset.train):
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(dataset.train)} training images of "
                          f"{cfg.data}: an epoch would have no full batch; give at most {len(dataset.train)}")
    return cfg.num_classes or dataset.num_classes


def _check_image_fits(model: nn.Module, name: str, split) -> None:
    """One image through the model (eval mode, no gradients, nothing changes): an image too
    small for the model's downsampling fails here, before anything is written."""
    height, width = split.image_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, split.images.shape[1] if hasattr(split, "images") else 3, height, width))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{height}x{width} images are too small for {name} ({first}); "
                          f"use larger images (--image-size for streamed folders) or a model with less downsampling") from None
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, batches, *, bf16: bool, device: torch.device, across_ranks: bool = False) -> dict:
    """Test loss, top-1 and top-5 accuracy (fractions) with running BN statistics.

    ``across_ranks``: ``batches`` is this rank's shard; the counts are summed over ranks.
    A compiled model is evaluated eagerly: eval mode and the test batch size would each make
    torch.compile build (and on CUDA, graph-capture) a second model, which costs more than a
    forward-only pass over the test set saves.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    with torch.no_grad(), _autocast(device, bf16), torch.compiler.set_stance("force_eager"):
        for x, y in batches.batches(0):
            logits = model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            k = min(5, logits.shape[1])
            best = logits.topk(k, dim=1).indices
            top1 += (best[:, 0] == y).sum()
            top5 += (best == y[:, None]).any(dim=1).sum()
            n += len(y)
    model.train(was_training)
    if across_ranks:
        totals = distributed.all_sum(torch.stack([loss_sum, top1.double(), top5.double(),
                                                  torch.tensor(float(n), dtype=torch.float64, device=device)]))
        loss_sum, top1, top5, n = totals[0], totals[1].long(), totals[2].long(), int(totals[3])
    return dict(test_loss=float(loss_sum) / n, test_acc=int(top1) / n, test_top5=int(top5) / n)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


class _Signals:
    """Turns STOP_SIGNALS into a flag checked between steps, so a checkpoint gets written."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Trainer:
    """Runs one configured training into its run folder."""

    def __init__(self, cfg: cfgmod.TrainConfig, built: Built, run: RunDir, log=print):
        self.cfg, self.b, self.run, self.log = cfg, built, run, log
        self.world = distributed.world()
        if cfg.sync_bn and self.world.distributed:
            built.model = distributed.sync_batchnorm(built.model, built.device)
        self.params = trainable_parameters(built.model)
        # What the steps call: DDP (gradient all-reduce) when distributed and anything trains.
        self.net = distributed.wrap(built.model, built.device) if self.world.distributed and self.params else built.model
        self.optimizer = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay) if self.params else None
        self.steps_per_epoch = built.train_batches.num_batches()
        self.total_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.eval_steps = {self.total_steps}  # eval_every 0: only at the end
        if cfg.eval_every > 0:
            every = max(1, round(cfg.eval_every * self.steps_per_epoch))
            self.eval_steps |= set(range(every, self.total_steps + 1, every))
        self.ckpt_steps = set(range(self.steps_per_epoch, self.total_steps + 1, self.steps_per_epoch))
        self.step = 0
        self.saved_step = 0
        self.wall = 0.0
        self.train_time = 0.0
        self.train_images = 0
        self.last_row = None
        self._reset_window()

    def _reset_window(self):
        dev = self.b.device
        self.win_loss = torch.zeros((), device=dev, dtype=torch.float64)
        self.win_correct = torch.zeros((), device=dev, dtype=torch.long)
        self.win_n = 0

    # --- checkpoints -------------------------------------------------------------------
    def state(self) -> dict:
        """The resumable state (a collective when distributed: the metrics window is summed over ranks)."""
        win_loss, win_correct, win_n = self._window_totals()
        return dict(
            step=self.step, model=self.b.model.state_dict(),
            optimizer=self.optimizer.state_dict() if self.optimizer else None,
            wall=self.wall, train_time=self.train_time, train_images=self.train_images,
            win_loss=win_loss.cpu(), win_correct=win_correct.cpu(), win_n=win_n,
            torch_rng=torch.get_rng_state(), run_id=self.cfg.run_id, world_size=self.world.world_size,
            compute=self.b.compute.to_dict(),
        )

    def _window_totals(self):
        if not self.world.distributed:
            return self.win_loss, self.win_correct, self.win_n
        t = distributed.all_sum(torch.stack([self.win_loss, self.win_correct.double(),
                                             torch.tensor(float(self.win_n), dtype=torch.float64, device=self.b.device)]))
        return t[0], t[1].long(), int(t[2])

    def load_state(self, state: dict) -> None:
        saved_world = state.get("world_size", 1)
        if saved_world != self.world.world_size and not self.cfg.sync_bn:
            raise ConfigError(
                f"{self.run.path} was checkpointed by {saved_world} process(es) and this launch has "
                f"{self.world.world_size}: with per-process BatchNorm statistics (no --sync-bn) that changes "
                f"the experiment; launch it with {saved_world} process(es)")
        self.b.model.load_state_dict(state["model"])
        if self.optimizer and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.wall = state["step"], state["wall"]
        self.saved_step = self.step
        self.train_time, self.train_images = state["train_time"], state["train_images"]
        self.win_loss = state["win_loss"].to(self.b.device)
        self.win_correct = state["win_correct"].to(self.b.device)
        self.win_n = state["win_n"]
        torch.set_rng_state(state["torch_rng"])
        if not self.world.is_main:  # the saved window is the sum over ranks: rank 0 carries it
            self._reset_window()
        if self.world.is_main:  # metrics written after this checkpoint will be written again
            self.run.write_metrics([m for m in self.run.read_metrics() if m["step"] <= self.step])

    def save(self) -> None:
        state = self.state()
        if not self.world.is_main:
            return
        try:
            self.run.save_checkpoint(state)
        except OutputError as e:
            kept = f"the last good checkpoint (step {self.saved_step}) is intact" if self.saved_step else "no checkpoint was kept"
            raise OutputError(f"{e}; {kept}: fix the output folder and launch again to resume") from e
        self.saved_step = self.step

    # --- the loop ----------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, model = self.cfg, self.b.model
        model.train()
        progress = _progress(cfg.progress and self.world.is_main, self.total_steps, self.step)
        sync_every = 1 if self.b.device.type == "cpu" else 25
        started = time.perf_counter()
        with _Signals() as signals:
            while self.step < self.total_steps:
                epoch, start = divmod(self.step, self.steps_per_epoch)
                t0 = time.perf_counter()
                for x, y in self.b.train_batches.batches(epoch, start):
                    loss, correct = self._train_step(x, y)
                    stop = distributed.first_signal(signals.received) if self.world.distributed else signals.received
                    self.step += 1
                    self.train_images += len(y)
                    self.win_loss += loss.detach().double() * len(y)
                    self.win_correct += correct
                    self.win_n += len(y)
                    if self.step % sync_every == 0 or self.step in self.eval_steps:
                        loss_value = self._check_finite(loss)
                        progress.update(self.step - progress.n)
                        ips = self.train_images / max(self.train_time + time.perf_counter() - t0, 1e-9)
                        progress.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{ips:.0f}", refresh=False)
                    if self.step in self.eval_steps or self.step in self.ckpt_steps or stop:
                        self.train_time += time.perf_counter() - t0
                        self.wall += time.perf_counter() - started
                        started = time.perf_counter()
                        if self.step in self.eval_steps:
                            self._evaluate_and_log(progress)
                        if self.step in self.ckpt_steps or stop:
                            self.save()
                        if stop:
                            progress.close()
                            raise Interrupted(f"{stop} at step {self.step}/{self.total_steps}", stop)
                        t0 = time.perf_counter()
                    if self.step >= self.total_steps:
                        break
        progress.close()
        self.wall += time.perf_counter() - started
        return self.last_row or self.run.read_metrics()[-1]

    def _train_step(self, x, y):
        cfg = self.cfg
        with _autocast(self.b.device, self.b.bf16):
            logits = self.net(x)
            loss = F.cross_entropy(logits.float(), y)
        if self.optimizer:
            lr = lr_at(cfg, self.step / self.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        correct = (logits.detach().argmax(1) == y).sum()
        return loss, correct

    def _check_finite(self, loss) -> float:
        """The step's loss (the mean over ranks when distributed, so every rank stops together)."""
        value = float(distributed.all_sum(loss.detach()) / self.world.world_size) if self.world.distributed else loss.item()
        if not math.isfinite(value):
            raise TrainingFailed(f"non-finite training loss ({value}) at step {self.step}; "
                                 f"lower --lr or check the data")
        return value

    def _evaluate_and_log(self, progress):
        if self.world.distributed:
            distributed.broadcast_buffers(self.b.model)  # evaluate (and save) rank 0's running statistics
        result = evaluate(self.b.model, self.b.test_batches, bf16=self.b.bf16, device=self.b.device,
                          across_ranks=self.world.distributed)
        win_loss, win_correct, win_n = self._window_totals()
        row = dict(
            step=self.step, epoch=round(self.step / self.steps_per_epoch, 4),
            lr=lr_at(self.cfg, (self.step - 1) / self.steps_per_epoch),
            train_loss=float(win_loss) / max(win_n, 1),
            train_acc=int(win_correct) / max(win_n, 1),
            **result,
            wall_seconds=round(self.wall, 3),
            images_per_second=round(self.train_images * self.world.world_size / max(self.train_time, 1e-9), 1),
        )
        self.last_row = row
        self._reset_window()
        if not self.world.is_main:
            return
        self.run.append_metrics(row)
        progress.write(
            f"epoch {row['epoch']:g}/{self.cfg.epochs:g}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
            f"  test acc {row['test_acc']:.4f} top5 {row['test_top5']:.4f}  {row['images_per_second']:.0f} img/s")


def _progress(enabled: bool, total: int, initial: int):
    import sys

    from tqdm.auto import tqdm

    # In a log file (not a terminal) a bar redrawn every step would bury the results.
    interval = 0.5 if sys.stderr.isatty() else 30
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, leave=False,
                mininterval=interval)


def count_summary(model: nn.Module) -> dict:
    """Parameter counts reported by ``bnonly info`` and every summary.json."""
    _, out_layer = output_layer(model)
    return dict(
        total_params=sum(p.numel() for p in _plain_parameters(model)),
        trainable_params=sum(p.numel() for p in trainable_parameters(model)),
        bn_params=bn_param_count(model),
        output_params=sum(p.numel() for p in _plain_parameters(out_layer)),
    )


def _plain_parameters(module: nn.Module) -> list[torch.Tensor]:
    """Parameters as the plain architecture has them: a parametrized weight counts once
    (its frozen original), not again for its trainable entries."""
    return [p for m in module.modules() if not isinstance(m, TrainableEntries) for p in m.parameters(recurse=False)]


def train(cfg: cfgmod.TrainConfig, log=print, *, default_threads: int | None = None) -> dict:
    """Train (or resume, or just report) the run ``cfg`` describes; returns its summary.

    Bad input is refused before anything is written: the config's fields on construction, an
    output folder that cannot be written, then (in :func:`build`) whatever needs the data. A
    resumed run keeps the compute settings it started with (:mod:`bnonly.compute`).
    ``default_threads``: CPU threads when neither the config nor the run's record sets them.

    Under torchrun every rank calls this with the same config: each trains on its shard, rank 0
    holds the run's lock, logs and writes every file, and all ranks resume from the same checkpoint.
    Any error after the run folder is set up is recorded in summary.json (status "failed", the
    reason and the traceback's tail) before it propagates; a signal (Interrupted) is not a failure,
    nor is an output folder that stopped taking writes (the last good checkpoint is intact).
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
            return _train_locked(cfg, built, run, log if distributed.world().is_main else _quiet)
    finally:
        if joined:
            distributed.leave()


def _quiet(*_):
    pass


def _report_done(run: RunDir, log) -> dict:
    summary = run.read_summary()
    log(f"run {run.path} already finished: test acc {summary['test_acc']:.4f}")
    return summary


def _train_locked(cfg: cfgmod.TrainConfig, built: Built, run: RunDir, log) -> dict:
    main = distributed.world().is_main
    trainer = Trainer(cfg, built, run, log)
    state, warnings = run.load_checkpoint(map_location=built.device, quarantine=main)
    for w in warnings:
        log(f"warning: {w}")
    if state is not None:
        recorded = state.get("compute")
        if recorded is not None and recorded != built.compute.to_dict():
            raise ConfigError(f"{run.path} was checkpointed by another process while this launch was starting "
                              f"(compute settings {recorded}); launch it again")
        trainer.load_state(state)
        log(f"resuming {run.path} at step {trainer.step}/{trainer.total_steps}")
        if built.compute_note:
            log(built.compute_note)
    elif main:
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_metrics([])
        atomic_write_json(run.config, cfg.to_dict())
        atomic_torch_save(run.init_weights, plain_state_dict(built.model))
    counts = count_summary(built.model)
    base = dict(run_id=cfg.run_id, run_dir=str(run.path), model=cfg.model, train=cfg.train, seed=cfg.seed,
                epochs=cfg.epochs, data=cfg.data, device=str(built.device), compute=built.compute.to_dict(),
                world_size=trainer.world.world_size, **counts)
    try:
        last = trainer.fit()
    except (Interrupted, OutputError):
        raise
    except Exception as e:
        if main:
            reason = str(e) if isinstance(e, TrainingFailed) else f"{type(e).__name__}: {e}"
            atomic_write_json(run.summary, dict(base, status="failed", reason=reason, wall_seconds=trainer.wall,
                                                traceback=traceback.format_exc().splitlines()[-12:]))
        raise
    summary = dict(base, status="done", test_acc=last["test_acc"], test_top5=last["test_top5"],
                   test_loss=last["test_loss"], train_loss=last["train_loss"], steps=trainer.step,
                   wall_seconds=round(trainer.wall, 3), images_per_second=last["images_per_second"])
    if main:
        atomic_torch_save(run.final_weights, plain_state_dict(built.model))
        atomic_write_json(run.summary, summary)
        run.checkpoint.unlink(missing_ok=True)
        run.previous_checkpoint.unlink(missing_ok=True)
    return summary
