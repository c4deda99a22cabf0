"""One run on several processes: DistributedDataParallel over the trainable parameters.

``torchrun --nproc_per_node=N -m bnonly train ...`` (or ``bnonly train --nproc N``, which starts
torchrun) describes the world in the environment; :func:`join` reads it. Every rank builds the
same model from the same seed and takes its slice of each *global* batch
(``make_batches(rank=, world_size=)``); DDP averages the gradients of the trainable parameters,
so a step sees the gradient of the mean loss over the global batch. Rank 0 writes every file.

BatchNorm statistics are per rank by default (each rank normalizes over its batch_size/N images,
the usual multi-GPU practice); ``sync_bn`` computes them over the global batch, and only then
do N processes compute what one process computes. ``torch.nn.SyncBatchNorm`` refuses CPU tensors
(torch 2.13 raises "SyncBatchNorm expected input tensor to be on GPU"), so CPU runs (gloo) use
:class:`GlobalBatchNorm2d`, which all-reduces per-channel sums instead.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .errors import EXIT_INTERRUPTED, EXIT_LOCKED, ConfigError, RunLocked
from .rundir import RunDir

_CONTROL = None  # a gloo group for small CPU-side agreements (signals, locks) when the data group is NCCL


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def world() -> World:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def join(device_name: str) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); True if this call created it.

    CUDA ranks use NCCL, each on GPU ``LOCAL_RANK``; CPU ranks use gloo.
    """
    global _CONTROL
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or (dist.is_available() and dist.is_initialized()):
        return False
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if device_name.startswith("cuda:"):
        raise ConfigError(f"device {device_name!r} names one GPU, but each of several processes takes GPU "
                          f"LOCAL_RANK: use --device cuda or auto")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    _CONTROL = dist.new_group(backend="gloo") if use_cuda else None
    return True


def leave() -> None:
    """Destroy the process group, after collecting garbage: anything in a reference cycle that
    still holds it (DDP's reducer does) would otherwise die at interpreter exit, where gloo's
    threads can abort the process ("terminate called without an active exception")."""
    import gc

    global _CONTROL
    _CONTROL = None
    gc.collect()
    dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the trainable parameters. Buffers are not broadcast every step: per-rank running
    BN statistics are never used in training mode, and :func:`broadcast_buffers` makes rank 0's
    the ones evaluated and saved."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = ([device.index if device.index is not None else torch.cuda.current_device()]
           if device.type == "cuda" else None)
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers (the old name warns).
    ddp_params = inspect.signature(DistributedDataParallel).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in ddp_params else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, **{no_sync: False})


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch: torch's SyncBatchNorm on GPUs, GlobalBatchNorm2d on CPU.

    Parameters and buffers stay the same objects, so the what-trains selection, the optimizer's
    parameter list and the state_dict keys are unchanged.
    """
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GlobalBatchNorm2d
    return model


class _SumAcrossRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the gradient of a sum over ranks is the sum of the
    ranks' gradients (``torch.distributed.nn.functional.all_reduce`` does this, but is deprecated)."""

    @staticmethod
    def forward(ctx, tensor):
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics cover every rank's batch (the CPU sync_bn).

    Per-channel sum, sum of squares and count are summed across ranks in float64 (one
    all-reduce forward, one backward), which matches BatchNorm on the concatenated batch to
    float32 rounding. Evaluation mode and single-process runs are plain BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        channels = x.shape[1]
        dims = (0, 2, 3)
        count = x.new_full((1,), x.numel() // channels, dtype=torch.float64)
        totals = _SumAcrossRanks.apply(torch.cat([x.sum(dims, dtype=torch.float64),
                                                  (x * x).sum(dims, dtype=torch.float64), count]))
        n = totals[-1]
        mean = totals[:channels] / n
        var = (totals[channels:2 * channels] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalizes
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                unbiased = var * n / (n - 1)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        shape = (1, channels, 1, 1)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        if self.affine:
            shift = self.bias - mean.to(x.dtype) * scale * self.weight
            scale = scale * self.weight
        else:
            shift = -mean.to(x.dtype) * scale
        return x * scale.view(shape) + shift.view(shape)


def first_signal(received: str | None) -> str | None:
    """Agree on stopping: a signal seen by any rank stops every rank at the same step."""
    import signal

    flag = torch.tensor([signal.Signals[received].value if received else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_CONTROL)
    return signal.Signals(int(flag)).name if int(flag) else None


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is untouched)."""
    out = tensor.clone()
    dist.all_reduce(out)
    return out


def broadcast_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (running BN statistics) before evaluating."""
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_CONTROL)
    return box[0]


@contextmanager
def held_by_main(make_context):
    """Enter ``make_context()`` on rank 0 only (e.g. the run's lock); if that raises, every rank raises it."""
    with ExitStack() as stack:
        error = None
        me = world()
        if me.is_main:
            try:
                stack.enter_context(make_context())
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                error = e
        if me.distributed:
            error = broadcast_object(error)
        if error is not None:
            raise error
        yield


def launch(cfg, nproc: int) -> int:
    """``bnonly train --nproc N``: torchrun with N processes on this machine; returns the exit code
    ``bnonly train`` would (0, EXIT_INTERRUPTED, EXIT_LOCKED, or 1).

    torchrun runs in this process (its ``main``), the resolved config travels as a JSON file so
    every rank trains exactly ``cfg``. A SIGINT/SIGTERM here makes torchrun pass the signal to the
    ranks, which agree on a step and checkpoint; SIGUSR2 (which torchrun does not handle) is
    turned into SIGTERM first.
    """
    import json
    import signal
    import tempfile
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun


    if "LOCAL_RANK" in os.environ:
        raise ConfigError("--nproc starts torchrun, and this process already runs under it: leave --nproc out")
    run = RunDir(f"{cfg.out}/{cfg.run_name}")
    if run.is_locked():
        raise RunLocked(f"run {run.path} is being trained by another process")
    old = signal.signal(signal.SIGUSR2, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    try:
        with tempfile.TemporaryDirectory(prefix="bnonly-") as tmp:
            config = Path(tmp) / "config.json"
            config.write_text(json.dumps(cfg.to_dict()))
            torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", "bnonly", "train", "--config", str(config)])
        return 0
    except SignalException:
        return EXIT_INTERRUPTED
    except ChildFailedError as e:
        codes = {f.exitcode for f in e.failures.values()}
        return next((c for c in (EXIT_INTERRUPTED, EXIT_LOCKED) if codes == {c}), 1)
    finally:
        signal.signal(signal.SIGUSR2, old)
