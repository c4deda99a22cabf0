"""The built-in what-trains terms, registered in the order ``--train``'s help lists them.

Each selector is a few lines over the layer kinds of ``bnonly.layers``. Random subsets are
drawn from the selection seed: ``random-per-channel`` and ``supermask``'s initial scores from the
spec's shared generator, ``random`` from a numpy generator of its own per term.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch import nn

from .. import layers
from .spec import TERMS, SelectContext, SpecError, spec_help
from .supermask import Scored, initial_scores, kept_count, parse_percent


def output_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The output layer (the last ``nn.Linear``); SpecError if the model has none."""
    found = layers.output_layer(model)
    if found is None:
        raise SpecError("the model has no nn.Linear layer, so 'output' selects nothing")
    return found


def _count(raw: str) -> int:
    if not re.fullmatch(r"\d+", raw):
        raise ValueError(f"{raw!r} is not a whole number")
    return int(raw)


def _count_or_matched(raw: str) -> int | str:
    return raw if raw == "matched" else _count(raw)


def _affine(model: nn.Module, term: str, types: tuple, which: tuple[str, ...], kind: str) -> dict[str, bool]:
    names = layers.affine_params(model, types, which)
    if not names:
        raise SpecError(f"'{term}' selects nothing: the model has no affine {kind} layers")
    return dict.fromkeys(names, True)


@TERMS.register("all", help="every parameter (the ordinary network), bare ones included (a ViT's class token and "
                            "position embedding)")
def _all(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
    return {name: True for name, _ in model.named_parameters()}


@TERMS.register("none", help="nothing (an evaluation-only run)")
def _none(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
    return {}


@TERMS.register("bn", help="γ and β of every BatchNorm layer — the output layer stays frozen")
def _bn(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
    return _affine(model, "bn", layers.BATCHNORM_TYPES, layers.AFFINE, "BatchNorm")


@TERMS.register("gamma", help="only γ of every BatchNorm layer")
def _gamma(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
    return _affine(model, "gamma", layers.BATCHNORM_TYPES, ("weight",), "BatchNorm")


@TERMS.register("beta", help="only β of every BatchNorm layer")
def _beta(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
    return _affine(model, "beta", layers.BATCHNORM_TYPES, ("bias",), "BatchNorm")


@TERMS.register("norm", help="γ and β of every normalization layer (BatchNorm, GroupNorm, LayerNorm, InstanceNorm, "
                             "RMSNorm)")
def _norm(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
    return _affine(model, "norm", layers.NORM_TYPES, layers.AFFINE, "normalization")


@TERMS.register("output", help="weight and bias of the output layer (the last `nn.Linear`)")
def _output(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
    mname, layer = output_layer(model)
    return {layers.qualified_name(mname, pname): True for pname, _ in layer.named_parameters(recurse=False)}


@TERMS.register("bias", help="every bias of the conv and linear layers, the output layer's included (BitFit)")
def _bias(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
    names = layers.weight_biases(model)
    if not names:
        raise SpecError(f"'{ctx.term}' selects nothing: the model has no conv or linear layer with a bias")
    return dict.fromkeys(names, True)


@TERMS.register("random-per-channel", syntax="random-per-channel:K", parse=_count,
                help="K random weights per output channel of every conv/linear weight, i.e. per output row of an "
                     "`nn.Linear` (attention's q/k/v and output projections, MLP layers) (`K=2` matches BN's 2 per "
                     "channel)")
def _random_per_channel(model: nn.Module, k: int, ctx: SelectContext) -> dict[str, torch.Tensor]:
    masks = {}
    for mname, layer in layers.weight_layers(model):
        w = layer.weight
        rows, fan_in = w.shape[0], w[0].numel()
        if k > fan_in:
            raise SpecError(f"{ctx.term} asks for more weights than layer '{mname}' has per channel ({fan_in})")
        chosen = torch.rand(rows, fan_in, generator=ctx.generator).topk(k, dim=1).indices
        mask = torch.zeros(rows, fan_in, dtype=torch.bool)
        mask.scatter_(1, chosen, True)
        masks[layers.qualified_name(mname, "weight")] = mask.view(w.shape)
    return masks


def matched_count(model: nn.Module) -> int:
    """What ``random:matched`` matches: the BatchNorm γ+β count (what ``bn`` trains, the paper's
    baseline, unchanged where a model has BatchNorm), else every normalization layer's γ+β (what
    ``norm`` trains: GroupNorm, LayerNorm, InstanceNorm, RMSNorm models)."""
    return layers.bn_param_count(model) or layers.norm_param_count(model)


@TERMS.register("random", syntax="random:matched|N", parse=_count_or_matched,
                help="N random weights, uniform over all conv/linear weights; `matched`: as many as the model has "
                     "BatchNorm γ+β, or, without BatchNorm, normalization γ+β (GroupNorm, LayerNorm, ...)")
def _random(model: nn.Module, arg: int | str, ctx: SelectContext) -> dict[str, torch.Tensor]:
    n = matched_count(model) if arg == "matched" else arg
    if n == 0:
        what = ("the model has no normalization layer with γ/β whose count it could match" if arg == "matched"
                else "N must be at least 1")
        raise SpecError(f"'{ctx.term}' selects nothing ({what})")
    weight_layers = layers.weight_layers(model)
    sizes = [layer.weight.numel() for _, layer in weight_layers]
    total = sum(sizes)
    if n > total:
        raise SpecError(f"{ctx.term} asks for more weights than the model's conv/linear layers hold ({total})")
    # A seed per term (ctx.index), so that 'random:10+random:10' draws two subsets.
    chosen = np.sort(np.random.default_rng(ctx.seed * 1000 + ctx.index).choice(total, size=n, replace=False))
    masks, start = {}, 0
    for (mname, layer), size in zip(weight_layers, sizes):
        local = chosen[(chosen >= start) & (chosen < start + size)] - start
        if len(local):
            mask = torch.zeros(size, dtype=torch.bool)
            mask[torch.from_numpy(local)] = True
            masks[layers.qualified_name(mname, "weight")] = mask.view(layer.weight.shape)
        start += size
    return masks



@TERMS.register("supermask", syntax="supermask:P", parse=parse_percent,
                help="edge-popup (Ramanujan et al. 2020): a trainable score for every conv/linear weight (the output "
                     "layer's included); the forward pass uses each layer's top P% of weights by |score| and "
                     "zeroes the rest; the weights never change (`bn+supermask:50` trains γ/β and the scores)")
def _supermask(model: nn.Module, percent, ctx: SelectContext) -> dict[str, Scored]:
    """Scores drawn from the spec's shared generator, layer by layer in module order."""
    found = layers.weight_layers(model)
    if not found:
        raise SpecError(f"'{ctx.term}' selects nothing: the model has no conv or linear layer")
    return {layers.qualified_name(mname, "weight"): Scored(initial_scores(layer.weight, ctx.generator),
                                                           kept_count(layer.weight.numel(), percent))
            for mname, layer in found}


SPEC_HELP = spec_help()
"""The help of the built-in terms (the ``train`` field's help text quotes it)."""
