"""Seeded initialization for any network, as the paper's framework does it.

Conv and linear weights are drawn from a registered distribution (:data:`WEIGHT_INITS`; the
paper's Kaiming normal unless asked otherwise); their biases keep PyTorch's default distribution
under every ReLU-calibrated one. Normalization layers get γ ~ U[0, 1] (the paper's default) or
γ = 1, and β = 0. Layers are chosen by module type (the kinds in ``bnonly.layers``), never by
parameter name, and every draw comes from one CPU generator visited in ``named_modules()`` order,
so a seed fixes the weights bit for bit whatever the global RNG state, the model's device or its
dtype.

A module's bare parameters (of no layer kind: a ViT's class token and position embedding) are
its own business: a module that has them defines ``init_own_parameters(generator)``, which
:func:`initialize` calls in module order with the shared generator, whatever the weight
distribution; without it they are left alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from ..errors import ConfigError
from ..layers import NORM_TYPES, RUNNING_STATS_TYPES, WEIGHT_TYPES
from ..registry import Registry

GAMMA_INITS = ("uniform", "ones")

_RELU_GAIN = math.sqrt(2.0)

WeightInit = Callable[[nn.Module, int, torch.Generator], None]

WEIGHT_INITS: Registry[WeightInit] = Registry("weight distribution", (
    "a function init(layer, fan_in, generator) that fills the weight and bias (None for bias=False) of one "
    "conv/linear layer (bnonly.layers.WEIGHT_TYPES) with fill(), drawing only from generator. Register it with "
    "help= (one line)"))

DEFAULT_WEIGHT_INIT = "kaiming_normal"


def check_gamma_init(gamma_init: str) -> None:
    if gamma_init not in GAMMA_INITS:
        raise ValueError(f"gamma_init must be one of {', '.join(map(repr, GAMMA_INITS))}; got {gamma_init!r}")


def check_weight_init(weight_init: str) -> None:
    """A ConfigError (a ValueError): a bad ``--weight-init`` is a one-line usage error, found by preflight."""
    if weight_init not in WEIGHT_INITS:
        raise ConfigError(f"weight_init must be one of {', '.join(map(repr, WEIGHT_INITS))}; got {weight_init!r}")


def fill(param: torch.Tensor | None, draw: Callable[[torch.Tensor], object]) -> None:
    """Draw into a float32 CPU tensor, then copy: the values do not depend on device or dtype.
    Absent, empty and meta tensors are skipped."""
    if param is None or param.is_meta or param.numel() == 0:
        return
    values = torch.empty(param.shape, dtype=torch.float32, device="cpu")
    draw(values)
    param.copy_(values)


def _default_bias(layer: nn.Module, fan_in: int, g: torch.Generator) -> None:
    """PyTorch's default bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the paper's framework keeps it."""
    bound = 1.0 / math.sqrt(fan_in)
    fill(layer.bias, lambda t: t.uniform_(-bound, bound, generator=g))


@WEIGHT_INITS.register("kaiming_normal", help="N(0, 2/fan_in) (He et al. 2015, fan-in, ReLU gain): the paper's")
def _kaiming_normal(layer: nn.Module, fan_in: int, g: torch.Generator) -> None:
    std = _RELU_GAIN / math.sqrt(fan_in)
    fill(layer.weight, lambda t: t.normal_(0.0, std, generator=g))
    _default_bias(layer, fan_in, g)


@WEIGHT_INITS.register("kaiming_uniform", help="U(±sqrt(6/fan_in)): Kaiming normal's variance, uniform")
def _kaiming_uniform(layer: nn.Module, fan_in: int, g: torch.Generator) -> None:
    bound = _RELU_GAIN * math.sqrt(3.0 / fan_in)
    fill(layer.weight, lambda t: t.uniform_(-bound, bound, generator=g))
    _default_bias(layer, fan_in, g)


@WEIGHT_INITS.register("orthogonal", help="the weight as (out, fan_in) has orthonormal rows (columns when out > "
                                          "fan_in) times sqrt(2) (Saxe et al. 2014; torch's orthogonal_)")
def _orthogonal(layer: nn.Module, fan_in: int, g: torch.Generator) -> None:
    fill(layer.weight, lambda t: nn.init.orthogonal_(t, gain=_RELU_GAIN, generator=g))
    _default_bias(layer, fan_in, g)


@WEIGHT_INITS.register("signed_constant", help="±σ with random signs, σ = sqrt(2/fan_in), Kaiming normal's std "
                                               "(Ramanujan et al. 2020)")
def _signed_constant(layer: nn.Module, fan_in: int, g: torch.Generator) -> None:
    sigma = _RELU_GAIN / math.sqrt(fan_in)
    fill(layer.weight, lambda t: t.bernoulli_(0.5, generator=g).mul_(2.0).sub_(1.0).mul_(sigma))
    _default_bias(layer, fan_in, g)


@WEIGHT_INITS.register("timm_vit", help="timm's ViT init: nn.Linear weights trunc_normal(std 0.02, cut at ±2), "
                                        "biases 0; convs (the patch embedding) keep PyTorch's default "
                                        "U(±1/sqrt(fan_in))")
def _timm_vit(layer: nn.Module, fan_in: int, g: torch.Generator) -> None:
    """timm's ``init_weights_vit_timm``: it sets nn.Linear only and leaves the patch embedding's conv at
    PyTorch's default, kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in)), bias likewise. timm's cut at ±2 is
    absolute (100 σ), so the weights are normal in practice."""
    if isinstance(layer, nn.Linear):
        fill(layer.weight, lambda t: nn.init.trunc_normal_(t, 0.0, 0.02, -2.0, 2.0, generator=g))
        fill(layer.bias, lambda t: t.zero_())
    else:
        bound = 1.0 / math.sqrt(fan_in)
        fill(layer.weight, lambda t: t.uniform_(-bound, bound, generator=g))
        _default_bias(layer, fan_in, g)


@torch.no_grad()
def initialize(model: nn.Module, *, gamma_init: str = "uniform", seed: int | None = 0,
               weight_init: str = DEFAULT_WEIGHT_INIT) -> nn.Module:
    """Initialize ``model`` in place and return it.

    Every ``Conv1d/2d/3d`` and ``Linear`` layer from ``weight_init`` (:data:`WEIGHT_INITS`; the
    default ``kaiming_normal``: weight ~ N(0, 2 / fan_in), bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    Every normalization layer with affine parameters (BatchNorm, InstanceNorm, GroupNorm,
    LayerNorm, RMSNorm): γ ~ U[0, 1] (``"uniform"``) or γ = 1 (``"ones"``), β = 0; BatchNorm
    running statistics are reset. A module's bare parameters: its ``init_own_parameters``, if any.
    Other modules are left alone. ``seed=None`` draws a nondeterministic seed. Parameters on the
    meta device are skipped.
    """
    check_gamma_init(gamma_init)
    check_weight_init(weight_init)
    init_weight = WEIGHT_INITS.get(weight_init)
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
            fan_in = math.prod(module.weight.shape[1:])
            if fan_in:
                init_weight(module, fan_in, g)
        elif isinstance(module, NORM_TYPES):
            gamma, beta = getattr(module, "weight", None), getattr(module, "bias", None)
            if gamma_init == "uniform":
                fill(gamma, lambda t: t.uniform_(0.0, 1.0, generator=g))
            else:
                fill(gamma, lambda t: t.fill_(1.0))
            fill(beta, lambda t: t.zero_())
            tracks = isinstance(module, RUNNING_STATS_TYPES) and module.track_running_stats
            if tracks and not module.running_mean.is_meta:
                module.reset_running_stats()
        own = getattr(module, "init_own_parameters", None)
        if callable(own):
            own(g)
    return model
