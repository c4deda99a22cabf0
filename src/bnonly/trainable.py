"""Which parameters train: a small, composable spec turned into per-entry masks.

A spec is one or more terms joined by ``+`` (a union). Terms:

====================== ==========================================================
``all``                every parameter
``none``               nothing (an evaluation-only run)
``bn``                 γ and β of every BatchNorm layer
``gamma`` / ``beta``   only γ / only β of every BatchNorm layer
``norm``               γ and β of every normalization layer (BatchNorm, GroupNorm,
                       LayerNorm, InstanceNorm)
``output``             weight and bias of the output layer (the last ``nn.Linear``)
``random-per-channel:K`` K random weights per output channel of every conv/linear
                       weight (BN has 2 per channel, so K=2 matches it channel for
                       channel)
``random:matched``     as many weights as the model has BatchNorm γ+β, drawn
                       uniformly over all conv/linear weights
``random:N``           N weights drawn uniformly over all conv/linear weights
====================== ==========================================================

Layers are found by module type, never by name, so any ``nn.Module`` works. Random
subsets are drawn from an explicit seed. A tensor that trains only in part is
re-expressed (``torch.nn.utils.parametrize``) as its frozen values plus a small
trainable vector of the selected entries, so the frozen entries are not parameters at
all: no optimizer, momentum or weight decay can move them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize
from .errors import BnonlyError

NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
WEIGHT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

SPEC_HELP = (
    "terms joined by '+': all, none, bn, gamma, beta, norm, output, "
    "random-per-channel:K, random:matched, random:N (e.g. 'bn+output')"
)


class SpecError(BnonlyError, ValueError):
    """A what-trains spec that cannot be parsed or applied."""


@dataclass
class Selection:
    """What trains: parameter name -> ``True`` (whole tensor) or a bool mask of entries."""

    spec: str
    seed: int
    masks: dict[str, bool | torch.Tensor] = field(default_factory=dict)

    def num_trainable(self, model: nn.Module) -> int:
        sizes = dict((n, p.numel()) for n, p in model.named_parameters())
        return sum(sizes[n] if m is True else int(m.sum()) for n, m in self.masks.items())


def _affine_params(model: nn.Module, types, which=("weight", "bias")):
    for mname, module in model.named_modules():
        if isinstance(module, types):
            for pname in which:
                if isinstance(getattr(module, pname, None), nn.Parameter):
                    yield _join(mname, pname)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def output_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """The output layer: the last ``nn.Linear`` in module order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise SpecError("the model has no nn.Linear layer, so 'output' selects nothing")
    return found[-1]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers, whose weights the random baselines draw from."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_TYPES)]


def bn_param_count(model: nn.Module) -> int:
    """Number of BatchNorm γ+β entries (the count the random baselines match)."""
    return sum(2 * m.num_features for m in model.modules() if isinstance(m, _BatchNorm) and m.affine)


def _random_per_channel(model: nn.Module, k: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    masks = {}
    for mname, layer in weight_layers(model):
        w = layer.weight
        rows = w.shape[0]
        fan_in = w[0].numel()
        if k > fan_in:
            raise SpecError(f"random-per-channel:{k} asks for more weights than layer '{mname}' has per channel ({fan_in})")
        keys = torch.rand(rows, fan_in, generator=gen)
        chosen = keys.topk(k, dim=1).indices
        mask = torch.zeros(rows, fan_in, dtype=torch.bool)
        mask.scatter_(1, chosen, True)
        masks[_join(mname, "weight")] = mask.view(w.shape)
    return masks


def _random_uniform(model: nn.Module, n: int, seed: int) -> dict[str, torch.Tensor]:
    layers = weight_layers(model)
    sizes = [layer.weight.numel() for _, layer in layers]
    total = sum(sizes)
    if n > total:
        raise SpecError(f"random:{n} asks for more weights than the model's conv/linear layers hold ({total})")
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    masks, start = {}, 0
    for (mname, layer), size in zip(layers, sizes):
        local = chosen[(chosen >= start) & (chosen < start + size)] - start
        if len(local):
            mask = torch.zeros(size, dtype=torch.bool)
            mask[torch.from_numpy(local)] = True
            masks[_join(mname, "weight")] = mask.view(layer.weight.shape)
        start += size
    return masks


_TERM = re.compile(r"^(all|none|bn|gamma|beta|norm|output|random-per-channel:(\d+)|random:(matched|\d+))$")


def parse_spec(spec: str) -> list[str]:
    """Split and validate a spec; raises :class:`SpecError` naming the bad term."""
    terms = [t.strip() for t in str(spec).split("+")]
    for t in terms:
        if not _TERM.match(t):
            raise SpecError(f"unknown what-trains term {t!r} in {spec!r}; valid: {SPEC_HELP}")
    return terms


def select(model: nn.Module, spec: str, seed: int = 0, *, bn_affine: bool = True) -> Selection:
    """Resolve ``spec`` on ``model`` into a :class:`Selection` (does not modify the model).

    With ``bn_affine=False`` BatchNorm γ/β are fixed (see :func:`disable_bn_affine`) and
    no term may train them.
    """
    terms = parse_spec(spec)
    params = dict(model.named_parameters())
    bn_names = set(_affine_params(model, _BatchNorm))
    gen = torch.Generator().manual_seed(seed)
    union: dict[str, bool | torch.Tensor] = {}

    def add(name: str, mask):
        old = union.get(name, False)
        if old is True or mask is True:
            union[name] = True
        else:
            union[name] = mask if old is False else old | mask

    for i, term in enumerate(terms):
        if term == "all":
            for n in params:
                if bn_affine or n not in bn_names:
                    add(n, True)
        elif term in ("bn", "gamma", "beta", "norm"):
            if not bn_affine and term != "norm":
                raise SpecError(f"'{term}' trains BatchNorm γ/β, but the BN affine is disabled (bn_affine=False)")
            which = {"gamma": ("weight",), "beta": ("bias",)}.get(term, ("weight", "bias"))
            types = NORM_TYPES if term == "norm" else _BatchNorm
            names = [n for n in _affine_params(model, types, which) if bn_affine or n not in bn_names]
            if not names:
                raise SpecError(f"'{term}' selects nothing: the model has no affine {('normalization' if term == 'norm' else 'BatchNorm')} layers")
            for n in names:
                add(n, True)
        elif term == "output":
            mname, layer = output_layer(model)
            for pname, _ in layer.named_parameters(recurse=False):
                add(_join(mname, pname), True)
        elif term.startswith("random-per-channel:"):
            for n, m in _random_per_channel(model, int(term.split(":")[1]), gen).items():
                add(n, m)
        elif term.startswith("random:"):
            arg = term.split(":")[1]
            n_weights = bn_param_count(model) if arg == "matched" else int(arg)
            if n_weights == 0:
                raise SpecError(f"'{term}' selects nothing (the model has no BatchNorm parameters to match)")
            # Each random term gets its own derived seed so 'random:10+random:10' draws twice.
            for n, m in _random_uniform(model, n_weights, seed * 1000 + i).items():
                add(n, m)
    for n, m in list(union.items()):
        if isinstance(m, torch.Tensor) and bool(m.all()):
            union[n] = True
    return Selection(spec=spec, seed=seed, masks=union)


class TrainableEntries(nn.Module):
    """Parametrization: the frozen tensor with its selected entries taken from ``values``.

    Only ``values`` is a parameter; the frozen tensor it is applied to has
    ``requires_grad=False``, so optimizers never see it.
    """

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        index = mask.reshape(-1).nonzero().squeeze(1).to(weight.device)
        self.register_buffer("index", index)
        self.values = nn.Parameter(weight.detach().reshape(-1)[index].clone())

    def forward(self, frozen: torch.Tensor) -> torch.Tensor:
        flat = frozen.reshape(-1).index_put((self.index,), self.values.to(frozen.dtype))
        return flat.view(frozen.shape)


def apply_selection(model: nn.Module, selection: Selection) -> nn.Module:
    """Make exactly the selected entries trainable, in place; returns ``model``."""
    for name, p in list(model.named_parameters()):
        mask = selection.masks.get(name, False)
        if isinstance(mask, torch.Tensor):
            mname, pname = name.rsplit(".", 1) if "." in name else ("", name)
            module = model.get_submodule(mname)
            parametrize.register_parametrization(module, pname, TrainableEntries(p, mask))
            getattr(module.parametrizations, pname).original.requires_grad_(False)
        else:
            p.requires_grad_(mask is True)
    return model


def disable_bn_affine(model: nn.Module) -> None:
    """The 'no affine' ablation: every BatchNorm γ=1, β=0, and neither can train."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _BatchNorm) and module.affine:
                module.weight.fill_(1.0)
                module.bias.zero_()
                module.weight.requires_grad_(False)
                module.bias.requires_grad_(False)


def configure(model: nn.Module, spec: str, seed: int = 0, *, bn_affine: bool = True) -> Selection:
    """Choose what trains on ``model`` in place: the one call most users need."""
    if not bn_affine:
        disable_bn_affine(model)
    selection = select(model, spec, seed, bn_affine=bn_affine)
    apply_selection(model, selection)
    return selection


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_parameters(model))


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with the plain architecture's keys and effective weights.

    Loadable with ``load_state_dict`` into an unmodified model of the same architecture,
    whatever mechanism trained a subset of its entries.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if "parametrizations." not in k}
    for mname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for pname in module.parametrizations:
                state[_join(mname, pname)] = getattr(module, pname).detach().clone()
    return state


def layer_breakdown(model: nn.Module) -> list[dict]:
    """Per parameter tensor: owning layer type, shape, total and trainable entries."""
    rows = []
    for mname, module in model.named_modules():
        if isinstance(module, (parametrize.ParametrizationList, TrainableEntries)):
            continue  # reported with the layer that owns them
        tensors = {n: (p, p.numel() if p.requires_grad else 0) for n, p in module.named_parameters(recurse=False)}
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                tensors[pname] = (getattr(module, pname), plist[0].values.numel())
        for pname, (p, trainable) in tensors.items():
            rows.append(dict(name=_join(mname, pname), layer=type(module).__name__,
                             shape=list(p.shape), total=p.numel(), trainable=trainable))
    return rows
