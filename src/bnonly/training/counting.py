"""Parameter counts, as ``bnonly info`` and every summary.json report them."""

from __future__ import annotations

import torch
from torch import nn

from ..layers import norm_param_count
from ..trainable import PARAMETRIZATIONS, bn_param_count, output_layer, trainable_parameters


def count_summary(model: nn.Module) -> dict:
    """Total, trainable, BatchNorm γ+β, normalization γ+β (any normalizer) and output-layer
    parameter counts of a configured model."""
    _, out_layer = output_layer(model)
    return dict(
        total_params=sum(p.numel() for p in _plain_parameters(model)),
        trainable_params=sum(p.numel() for p in trainable_parameters(model)),
        bn_params=bn_param_count(model),
        norm_params=norm_param_count(model),
        output_params=sum(p.numel() for p in _plain_parameters(out_layer)),
    )


def _plain_parameters(module: nn.Module) -> list[torch.Tensor]:
    """Parameters as the plain architecture has them: a parametrized weight counts once
    (its frozen original), not again for its trainable entries or supermask scores."""
    return [p for m in module.modules() if not isinstance(m, PARAMETRIZATIONS) for p in m.parameters(recurse=False)]
