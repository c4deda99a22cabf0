"""Optimizers, by name (``--optimizer``): SGD with momentum (the paper's) and AdamW.

Contract of an entry: ``make(params, cfg) -> torch.optim.Optimizer`` over the given trainable
tensors (or parameter groups), reading ``lr``, ``momentum`` and ``weight_decay`` from the run's
config as it sees fit. The learning rate is set again before every step from the schedule, so
the ``lr`` given here only matters for the optimizer's own bookkeeping.
"""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..registry import Registry

OPTIMIZERS: Registry = Registry("optimizer", "make(params, cfg: TrainConfig) -> torch.optim.Optimizer")


@OPTIMIZERS.register("sgd", help="SGD with momentum and weight decay on every trainable tensor (the paper's)")
def sgd(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw", help="AdamW (betas 0.9, 0.999; decoupled weight decay); momentum is not used")
def adamw(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
