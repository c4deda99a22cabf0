"""Making a selection real: exactly the selected entries become parameters, the rest are frozen.

A tensor that trains only in part is re-expressed (``torch.nn.utils.parametrize``) as its frozen
values plus a small trainable vector of the selected entries, so the frozen entries are not
parameters at all: no optimizer, momentum or weight decay can move them. A weight under a
supermask (``supermask.py``) is re-expressed the same way, as its frozen values times the mask of
its trainable scores.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import layers
from .spec import Selection, select
from .supermask import Supermask


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


#: The parametrizations ``apply_selection`` registers: their parameters are what trains, not
#: parameters of the plain architecture.
PARAMETRIZATIONS = (TrainableEntries, Supermask)


def apply_selection(model: nn.Module, selection: Selection) -> nn.Module:
    """Make exactly the selected entries trainable, in place; returns ``model``."""
    for name, p in list(model.named_parameters()):
        mask = selection.masks.get(name, False)
        scored = selection.scored.get(name)
        if scored is not None:
            mname, pname = name.rsplit(".", 1) if "." in name else ("", name)
            module = model.get_submodule(mname)
            parametrize.register_parametrization(module, pname, Supermask(p, scored))
            getattr(module.parametrizations, pname).original.requires_grad_(False)
        elif isinstance(mask, torch.Tensor):
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
        for _, module in layers.layers_of(model, layers.BATCHNORM_TYPES):
            if module.affine:
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
    """The parameters that train (``requires_grad``), in ``model.parameters()`` order: what to hand
    the optimizer after :func:`configure`. A tensor that trains in part contributes only the
    vector of its chosen entries; its frozen entries are no parameter at all."""
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
                state[layers.qualified_name(mname, pname)] = getattr(module, pname).detach().clone()
    return state


def supermasks(model: nn.Module) -> dict[str, Supermask]:
    """Plain weight name -> the :class:`Supermask` that masks it, for every weight under one."""
    return {layers.qualified_name(mname, pname): plist[0]
            for mname, module in model.named_modules() if parametrize.is_parametrized(module)
            for pname, plist in module.parametrizations.items() if isinstance(plist[0], Supermask)}


def score_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain weight name -> its supermask's scores (empty unless a supermask trains). A finished
    run keeps them in scores.pt: final.pt holds only the masked weights they chose."""
    return {name: m.scores.detach().clone() for name, m in supermasks(model).items()}


def layer_breakdown(model: nn.Module) -> list[dict]:
    """Per parameter tensor: owning layer type, shape, total and trainable entries."""
    rows = []
    for mname, module in model.named_modules():
        if isinstance(module, (parametrize.ParametrizationList, *PARAMETRIZATIONS)):
            continue  # reported with the layer that owns them
        tensors = {n: (p, p.numel() if p.requires_grad else 0) for n, p in module.named_parameters(recurse=False)}
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                tensors[pname] = (getattr(module, pname), sum(p.numel() for p in plist[0].parameters()
                                                              if p.requires_grad))
        for pname, (p, trainable) in tensors.items():
            rows.append(dict(name=layers.qualified_name(mname, pname), layer=type(module).__name__,
                             shape=list(p.shape), total=p.numel(), trainable=trainable))
    return rows
