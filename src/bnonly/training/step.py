"""One training step: the unit the loop calls, the benchmark times, and a captured graph replaces.

:class:`TrainStep` is the eager step: forward under autocast, the objective on float32 logits,
backward, and the optimizer step with the learning rate the schedule gives for this step. Any
object with the same call signature can stand in for it (the loop only calls it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .evaluate import autocast


@dataclass
class StepOutput:
    """What a step reports: the batch's mean loss and number of correct top-1 predictions (both
    detached, still on the device, so reading them is the caller's choice of sync point)."""

    loss: torch.Tensor
    correct: torch.Tensor
    n: int


class TrainStep:
    """The eager step. ``epoch(e, start)`` yields the batches of epoch ``e`` from batch ``start``
    on; ``step(batch, index) -> StepOutput`` takes one optimizer step on one of them.

    ``index`` is the number of steps taken before this one; ``lr_at_step(index)`` gives its
    learning rate, scaled per parameter group by the group's ``lr_scale`` (default 1). With no
    optimizer (nothing trains) it only evaluates the loss in training mode, which still updates
    BatchNorm running statistics.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer | None, objective: Callable, batches,
                 *, device: torch.device, bf16: bool, lr_at_step: Callable[[int], float]):
        self.net, self.optimizer, self.objective, self.batches = net, optimizer, objective, batches
        self.device, self.bf16, self.lr_at_step = device, bf16, lr_at_step

    def epoch(self, epoch: int, start: int = 0):
        return self.batches.batches(epoch, start)

    def __call__(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> StepOutput:
        x, y = batch
        with autocast(self.device, self.bf16):
            logits = self.net(x)
            loss = self.objective(logits.float(), y)
        if self.optimizer is not None:
            lr = self.lr_at_step(index)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        correct = (logits.detach().argmax(1) == y).sum()
        return StepOutput(loss.detach(), correct, len(y))
