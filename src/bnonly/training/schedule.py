"""The learning-rate schedule: linear warmup, then step decay at milestones.

Milestones and warmup are given in ``schedule_epochs`` units (the recipe's length) and scaled to
``epochs``, so a shortened run keeps the recipe's shape.
"""

from __future__ import annotations

from ..config import TrainConfig


def lr_at(cfg: TrainConfig, progress_epochs: float) -> float:
    """The learning rate after ``progress_epochs`` epochs of training (fractions allowed)."""
    e = progress_epochs * cfg.schedule_epochs / cfg.epochs
    if cfg.warmup_epochs and e < cfg.warmup_epochs:
        return cfg.lr * e / cfg.warmup_epochs
    return cfg.lr * cfg.lr_gamma ** sum(e >= m for m in cfg.milestones)
