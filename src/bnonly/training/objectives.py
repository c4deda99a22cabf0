"""Objectives: the loss a training step minimizes, by name (``--loss``).

Contract of an entry: ``objective(logits, labels) -> scalar loss``, where ``logits`` are float32
(the step casts them out of autocast) and ``labels`` are int64 class indices. Register your own::

    from bnonly.training import OBJECTIVES

    @OBJECTIVES.register("smooth_ce", help="cross-entropy with label smoothing 0.1")
    def smooth_ce(logits, labels):
        return torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)

The test loss reported in metrics is always cross-entropy, so runs with different objectives
stay comparable.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..registry import Registry

OBJECTIVES: Registry = Registry("loss", "objective(logits float32 N x C, labels int64 N) -> scalar tensor")

OBJECTIVES.register("cross_entropy", F.cross_entropy, help="mean cross-entropy over the batch (the paper's)")
