"""Seeded initialization for any network, as the paper's framework does it.

Conv and linear weights are Kaiming normal (fan-in, ReLU gain); their biases keep PyTorch's default
distribution. Normalization layers get γ ~ U[0, 1] (the paper's default) or γ = 1, and β = 0.
Layers are chosen by module type (the kinds in ``bnonly.layers``), never by parameter name, and
every draw comes from one CPU generator visited in ``named_modules()`` order, so a seed fixes the
weights bit for bit whatever the global RNG state, the model's device or its dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from ..layers import NORM_TYPES, RUNNING_STATS_TYPES, WEIGHT_TYPES

GAMMA_INITS = ("uniform", "ones")

_RELU_GAIN = math.sqrt(2.0)


def check_gamma_init(gamma_init: str) -> None:
    if gamma_init not in GAMMA_INITS:
        raise ValueError(f"gamma_init must be one of {', '.join(map(repr, GAMMA_INITS))}; got {gamma_init!r}")


def _fill(param: torch.Tensor | None, draw: Callable[[torch.Tensor], object]) -> None:
    """Draw into a float32 CPU tensor, then copy: the values do not depend on device or dtype."""
    if param is None or param.is_meta or param.numel() == 0:
        return
    values = torch.empty(param.shape, dtype=torch.float32, device="cpu")
    draw(values)
    param.copy_(values)


@torch.no_grad()
def initialize(model: nn.Module, *, gamma_init: str = "uniform", seed: int | None = 0) -> nn.Module:
    """Initialize ``model`` in place and return it.

    Every ``Conv1d/2d/3d`` and ``Linear`` weight ~ N(0, 2 / fan_in); their biases ~
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Every normalization layer with affine parameters
    (BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm): γ ~ U[0, 1] (``"uniform"``) or
    γ = 1 (``"ones"``), β = 0; BatchNorm running statistics are reset. Other modules are left
    alone. ``seed=None`` draws a nondeterministic seed. Parameters on the meta device are skipped.
    """
    check_gamma_init(gamma_init)
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)

    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if isinstance(p, UninitializedParameter):
                raise ValueError(
                    f"parameter {name + '.' if name else ''}{pname} is uninitialized (lazy module): "
                    "run one forward pass before initialize()"
                )
        if isinstance(module, WEIGHT_TYPES):
            w = module.weight
            fan_in = math.prod(w.shape[1:])
            if fan_in == 0:
                continue
            std = _RELU_GAIN / math.sqrt(fan_in)
            bound = 1.0 / math.sqrt(fan_in)
            _fill(w, lambda t: t.normal_(0.0, std, generator=g))
            _fill(module.bias, lambda t: t.uniform_(-bound, bound, generator=g))
        elif isinstance(module, NORM_TYPES):
            gamma, beta = getattr(module, "weight", None), getattr(module, "bias", None)
            if gamma_init == "uniform":
                _fill(gamma, lambda t: t.uniform_(0.0, 1.0, generator=g))
            else:
                _fill(gamma, lambda t: t.fill_(1.0))
            _fill(beta, lambda t: t.zero_())
            tracks = isinstance(module, RUNNING_STATS_TYPES) and module.track_running_stats
            if tracks and not module.running_mean.is_meta:
                module.reset_running_stats()
    return model
