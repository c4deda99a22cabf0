"""Edge-popup's supermask (Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?",
CVPR 2020): every frozen conv/linear weight gets a trainable score, and the forward pass uses only
the weights whose score is in the top P% of their layer; the rest are zero.

What trains is the scores, never the weights: a weight tensor under a supermask is re-expressed
(``torch.nn.utils.parametrize``, like a tensor that trains in part) as its frozen values times a
0/1 mask derived from the scores on every forward pass, so the frozen values are no parameter at
all and nothing can move them.

The choices, as edge-popup's released code makes them (``GetSubnet`` over ``scores.abs()``):

- the top P% by **absolute** score, ``ceil(n·P/100)`` of a layer's ``n`` weights (edge-popup zeroes
  the ``int((1 - P/100)·n)`` lowest and keeps the rest; computed here in exact fractions, so
  ``supermask:50`` keeps exactly half of an even-sized layer, and at least one weight always);
- the gradient passes straight through the top-k choice: ∂L/∂|s| = ∂L/∂w_eff · w (w the frozen
  weight, w_eff = w·mask), hence ∂L/∂s = sign(s) · ∂L/∂w_eff · w, which moves |s| as the paper's
  rule moves s;
- scores start Kaiming uniform (``kaiming_uniform_(a=√5)``: U(-1/√fan_in, 1/√fan_in)), drawn
  here from the selection's generator so that a run is bit-reproducible from its seeds.

Biases are neither scored nor masked (edge-popup's networks have none); ``bias+supermask:50`` trains
them as well.

The mask is re-derived every forward pass by one ``topk`` over each layer's flattened scores (no
Python loop over weights). Measured with ``bnonly bench --model cifar_resnet_14 --train
supermask:50 --threads 1`` (batch 128, float32, one thread of a 2-core AVX2 EPYC shared with a
background sweep): ``aten::topk`` is 0.8% of the step (11 ms for the 16 layers' 174k scores), and
``kthvalue`` would save a fifth of that at the price of ties; the step is about 1.4x slower than
``--train bn``'s (112-123 img/s against 161-164) because every conv now computes its weight
gradient (``convolution_backward`` with the weight output on, half the step), which BN-only skips.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn


def parse_percent(raw: str) -> Fraction:
    """``supermask:P``'s argument: a percentage above 0 and at most 100 (``50``, ``12.5``), exact."""
    if not re.fullmatch(r"\d+(\.\d+)?", raw):
        raise ValueError(f"{raw!r} is not a percentage: give the share of each layer's weights to keep, "
                         f"a number above 0 and at most 100 (e.g. 50)")
    percent = Fraction(raw)
    if not 0 < percent <= 100:
        raise ValueError(f"the kept share must be above 0% and at most 100%, got {raw}%")
    return percent


def kept_count(numel: int, percent: Fraction) -> int:
    """How many of a layer's ``numel`` weights ``supermask:percent`` keeps: ceil(numel·P/100),
    as edge-popup keeps all but int((1 - P/100)·numel)."""
    return max(1, math.ceil(numel * Fraction(percent) / 100))


def initial_scores(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Edge-popup's score initialization, ``kaiming_uniform_(a=√5)``: U(-1/√fan_in, 1/√fan_in)
    with fan_in the weights per output channel, drawn on the CPU from ``generator``."""
    bound = 1.0 / math.sqrt(weight[0].numel())
    return (torch.rand(weight.shape, generator=generator) * 2 - 1) * bound


@dataclass(frozen=True)
class Scored:
    """A selector's answer for a weight under a supermask (instead of True or a bool mask): its
    initial scores and how many of its entries the forward pass keeps."""

    scores: torch.Tensor
    keep: int


class _TopK(torch.autograd.Function):
    """The 0/1 mask of the ``keep`` largest entries; the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: int) -> torch.Tensor:
        flat = scores.reshape(-1)
        mask = torch.zeros_like(flat)
        mask.scatter_(0, flat.topk(keep, sorted=False).indices, 1.0)
        return mask.view(scores.shape)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The float 0/1 mask of the ``keep`` largest |scores|, with the straight-through gradient."""
    return _TopK.apply(scores.abs(), keep)


class Supermask(nn.Module):
    """Parametrization: the frozen weight times the mask of its top-``keep`` scores by |score|.

    Only ``scores`` is a parameter; the frozen weight it is applied to has ``requires_grad=False``.
    """

    def __init__(self, weight: torch.Tensor, scored: Scored):
        super().__init__()
        if scored.scores.shape != weight.shape:
            raise ValueError(f"scores of shape {tuple(scored.scores.shape)} for a weight of shape "
                             f"{tuple(weight.shape)}")
        self.keep = scored.keep
        self.scores = nn.Parameter(scored.scores.to(device=weight.device, dtype=weight.dtype).clone())

    def mask(self) -> torch.Tensor:
        """The current 0/1 mask (float, the weight's shape)."""
        return topk_mask(self.scores, self.keep)

    def forward(self, frozen: torch.Tensor) -> torch.Tensor:
        return frozen * self.mask().to(frozen.dtype)

    def extra_repr(self) -> str:
        return f"keep={self.keep} of {self.scores.numel()}"
