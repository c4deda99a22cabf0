"""Optimizers, by name (``--optimizer``): SGD with momentum (the paper's) and AdamW, and the
parameter groups they are given.

Contract of an entry: ``make(groups, cfg) -> torch.optim.Optimizer`` over the parameter groups
of :func:`param_groups` (a list of dicts, each with ``params`` and maybe ``weight_decay`` and
``lr_scale``), reading ``lr``, ``momentum`` and ``weight_decay`` from the run's config as it
sees fit. The learning rate is set again before every step from the schedule, times the group's
``lr_scale``, so the ``lr`` given here only matters for the optimizer's own bookkeeping.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TrainConfig
from ..layers import norm_affine_params
from ..registry import Registry

OPTIMIZERS: Registry = Registry("optimizer", "make(groups, cfg: TrainConfig) -> torch.optim.Optimizer")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable tensors, in one group, or two when normalization γ/β get their own weight
    decay (``norm_weight_decay``) or learning-rate multiplier (``norm_lr_scale``). With both at
    their defaults it is the single group the paper's recipe has, so old checkpoints still load."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.norm_weight_decay is None and cfg.norm_lr_scale == 1.0:
        return [dict(params=[p for _, p in trainable])]
    norm = set(norm_affine_params(model))
    groups = [dict(params=[p for n, p in trainable if n not in norm]),
              dict(params=[p for n, p in trainable if n in norm], lr_scale=cfg.norm_lr_scale,
                   weight_decay=cfg.weight_decay if cfg.norm_weight_decay is None else cfg.norm_weight_decay)]
    return [g for g in groups if g["params"]]


@OPTIMIZERS.register("sgd", help="SGD with momentum and weight decay on every trainable tensor (the paper's)")
def sgd(groups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw", help="AdamW (betas 0.9, 0.999; decoupled weight decay); momentum is not used")
def adamw(groups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
