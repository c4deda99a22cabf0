"""The whole training step as device work on fixed shapes, captured in one CUDA graph (``--capture``).

A CIFAR ResNet step at batch 128 is a few hundred kernels of a few microseconds each; run from
Python, the GPU waits on the CPU between them (on an H200, BN-only ResNet-56 took 6.34 ms per
step of which the GPU was busy 2.57 ms). :class:`DeviceStep` makes everything in a step a device
operation whose shapes never change, so the step can be recorded once and replayed:

- the batch: the epoch's permutation, crop offsets and flips (drawn on the CPU from the same
  seeded generator as the eager path, so the data order is identical) are copied once per epoch
  into device buffers; a device counter says where the step's batch starts, so the gather,
  crop, flip and normalization of the device-resident uint8 images happen inside the graph;
- forward under autocast, the objective, backward;
- SGD (momentum, weight decay) as a few ``torch._foreach`` kernels, with the learning rate in a
  device tensor: a schedule change writes the tensor and never re-captures the graph;
- the counter's advance.

On CUDA the first ``warmup`` steps of a launch run eagerly on a side stream (they allocate the
momentum buffers and let cuDNN and autocast settle), then the step is captured and every later
step is one ``graph.replay()``. On the CPU there is no graph: the same step function runs
eagerly, which is how the tests check it. The SGD update uses a tensor learning rate
(``p += buf * -lr``), so it rounds differently from ``torch.optim.SGD`` (``p += -lr * buf`` in one
fused operation): runs with and without ``--capture`` agree to float32 rounding, not bit for
bit. Resume is exact either way: the momentum buffers live in the optimizer's state as usual.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data import DeviceBatches
from ..data.batches import _to_float
from ..errors import ConfigError
from .evaluate import autocast
from .step import StepOutput


class DeviceStep:
    """The captured (CUDA) or whole-step eager (CPU) step; same interface as :class:`TrainStep`."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer | None, objective: Callable,
                 batches, *, device: torch.device, bf16: bool, lr_at_step: Callable[[int], float], warmup: int = 3):
        _check_supported(optimizer, batches)
        self.net, self.optimizer, self.objective, self.batches = net, optimizer, objective, batches
        self.device, self.bf16, self.lr_at_step, self.warmup = device, bf16, lr_at_step, warmup
        self.batch_size = batches.plan.batch_size
        n = batches.plan.n
        self.order = torch.zeros(n, dtype=torch.long, device=device)
        self.offsets = torch.zeros(n, 2, dtype=torch.long, device=device) if batches.augment else None
        self.flips = torch.zeros(n, dtype=torch.bool, device=device) if batches.augment else None
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.within = torch.arange(self.batch_size, device=device)
        groups = optimizer.param_groups if optimizer is not None else []
        self.neg_lr = [torch.zeros((), dtype=torch.float32, device=device) for _ in groups]
        self._lr = None
        self.graph, self.static_out, self.eager_steps = None, None, 0
        self.capture = device.type == "cuda"

    def epoch(self, epoch: int, start: int = 0):
        """Copy the epoch's draws into the device buffers; yields the batch numbers."""
        self.batches.plan.check_start(start)
        order, offsets, flips = self.batches.epoch_draws(epoch)
        self.order.copy_(order)
        if self.offsets is not None:
            self.offsets.copy_(offsets)
            self.flips.copy_(flips)
        self.pos.fill_(start * self.batch_size)
        return range(start, self.batches.num_batches())

    def __call__(self, batch: int, index: int) -> StepOutput:
        lr = self.lr_at_step(index)
        if lr != self._lr:  # piecewise constant: a tensor write only when the schedule moves
            for t, group in zip(self.neg_lr, self.optimizer.param_groups if self.optimizer else []):
                t.fill_(-lr * group.get("lr_scale", 1.0))
            self._lr = lr
        if self.graph is None and self.capture and self.eager_steps >= self.warmup:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            loss, correct = self.static_out
        elif self.capture:  # CUDA warmup: eager, on a side stream, as graph capture requires
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                loss, correct = self._eager()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            loss, correct = self._eager()
        return StepOutput(loss.clone(), correct.clone(), self.batch_size)

    def _eager(self):
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        self.eager_steps += 1
        return self._body()

    def _capture(self) -> None:
        torch.cuda.synchronize(self.device)
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)  # backward inside the graph writes fresh gradients
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = self._body()

    def current_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch at the device counter: the same images, crops and flips as the eager path's."""
        b = self.batches
        at = self.pos + self.within
        picked = self.order[at]
        x = b._gather(picked, None if self.offsets is None else self.offsets[at],
                      None if self.flips is None else self.flips[at])
        return _to_float(x, b.scale, b.shift, b.dtype), b.labels[picked]

    def _body(self):
        """One step, as device operations only (what the graph records)."""
        x, y = self.current_batch()
        with autocast(self.device, self.bf16):
            logits = self.net(x)
            loss = self.objective(logits.float(), y)
        if self.optimizer is not None:
            loss.backward()
            self._sgd()
        correct = (logits.detach().argmax(1) == y).sum()
        self.pos.add_(self.batch_size)
        return loss.detach(), correct

    @torch.no_grad()
    def _sgd(self) -> None:
        """torch.optim.SGD's update (dampening 0, not Nesterov) with a tensor learning rate."""
        for group, neg_lr in zip(self.optimizer.param_groups, self.neg_lr):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            if group["momentum"]:
                state = self.optimizer.state
                if any("momentum_buffer" not in state[p] or state[p]["momentum_buffer"] is None for p in params):
                    for p, g in zip(params, grads):  # the first step ever: the buffer is the gradient
                        state[p]["momentum_buffer"] = torch.clone(g).detach()
                else:
                    bufs = [state[p]["momentum_buffer"] for p in params]
                    torch._foreach_mul_(bufs, group["momentum"])
                    torch._foreach_add_(bufs, grads)
                grads = [state[p]["momentum_buffer"] for p in params]
            torch._foreach_add_(params, torch._foreach_mul(grads, neg_lr))


def check_capturable(batches, optimizer: str) -> None:
    """What ``build`` checks before anything is written: the data and the optimizer by name."""
    _check_batches(batches)
    if optimizer != "sgd":
        raise ConfigError(f"--capture implements SGD only, not {optimizer}; leave --capture out")


def _check_supported(optimizer, batches) -> None:
    _check_batches(batches)
    if optimizer is not None:
        if type(optimizer) is not torch.optim.SGD:
            raise ConfigError(f"--capture implements SGD only, not {type(optimizer).__name__}; leave --capture out")
        if any(g["nesterov"] or g["dampening"] or g.get("maximize") for g in optimizer.param_groups):
            raise ConfigError("--capture implements plain SGD with momentum (no Nesterov, dampening or maximize)")


def _check_batches(batches) -> None:
    if not isinstance(batches, DeviceBatches):
        raise ConfigError("--capture needs in-memory data (CIFAR-style arrays on the device), not a streamed folder")
    if batches.plan.world_size != 1:
        raise ConfigError("--capture trains one process per run; leave it out with several processes (DDP)")
    if not batches.plan.drop_last:
        raise ConfigError("--capture needs every training batch to be full (drop_last)")
