"""BN features in a model: which layers are analysed, where their outputs go, and forward hooks
that count a feature's off inputs or zero it.

Two functions decide what the analyses look at, and nothing else tests layer types:
:func:`is_normalizer` (which modules are analysed) and :func:`is_relu_like` (which consumers of
their output count as the ReLU). Other normalizers (GroupNorm, LayerNorm, InstanceNorm) and other
ReLU-like activations are added there.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import AnalysisError

#: Where a BN's output goes, as analysis.json names the kinds, and as figures and tables label them.
DESTINATION_LABELS = {"relu_fed": "ReLU-fed BNs", "other": "other BNs (residual side)"}

_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)


def is_normalizer(module: nn.Module) -> bool:
    """Whether the analyses study ``module``: every BatchNorm (``_BatchNorm``), found by type, never by name."""
    return isinstance(module, _BatchNorm)


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every analysed normalization layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if is_normalizer(m)]


def is_relu_like(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether a node of an fx graph applies a ReLU (module, function or tensor method)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.ReLU)
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return node.op == "call_function" and node.target in _RELU_FUNCTIONS


def relu_fed_batchnorms(model: nn.Module) -> set[str] | None:
    """Names of the BN layers whose output is used only by ReLUs, or None if fx cannot trace the model.

    Tracing sees the real data flow (a module's position in ``named_modules`` does not say
    whether a residual sum comes before its ReLU). Models with data-dependent control flow
    cannot be traced; they are analysed without the ReLU-fed/other split.
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        return None
    modules = dict(traced.named_modules())
    return {node.target for node in traced.graph.nodes
            if node.op == "call_module" and is_normalizer(modules[node.target])
            and node.users and all(is_relu_like(user, modules) for user in node.users)}


def split_by_destination(masks: dict[str, torch.Tensor], relu_fed: set[str]) -> dict[str, dict]:
    """{"relu_fed": masks of the ReLU-fed BNs, "other": masks of the rest}, leaving out an empty kind."""
    split = {"relu_fed": {n: m for n, m in masks.items() if n in relu_fed},
             "other": {n: m for n, m in masks.items() if n not in relu_fed}}
    return {kind: kind_masks for kind, kind_masks in split.items() if kind_masks}


def affine_values(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(γ, β) as float CPU tensors; a layer without affine parameters acts as γ = 1, β = 0."""
    if not module.affine:
        return torch.ones(module.num_features), torch.zeros(module.num_features)
    return module.weight.detach().float().cpu(), module.bias.detach().float().cpu()


# --- hooks: counting off features, zeroing features ------------------------------------------

def _active(out: torch.Tensor) -> torch.Tensor:
    """(N, C) bool: the channel's BN output is positive somewhere, so ReLU passes something."""
    positive = out.detach() > 0
    return positive.flatten(2).any(2) if positive.dim() > 2 else positive


class OffCounter:
    """While active, counts per BN channel the inputs whose ``ReLU(BN(x))`` is all zero."""

    def __init__(self, layers: list[tuple[str, nn.Module]]):
        self.layers = layers
        self.off: dict[str, torch.Tensor] = {}
        self.seen: dict[str, int] = {}
        self._handles = []

    def _hook(self, name: str):
        def hook(module, inputs, out):
            off = (~_active(out)).sum(0)
            self.off[name] = off if name not in self.off else self.off[name] + off
            self.seen[name] = self.seen.get(name, 0) + out.shape[0]
        return hook

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def shares(self) -> dict[str, torch.Tensor]:
        """Layer name -> per-channel off share in [0, 1] (float64, CPU)."""
        if not self.seen:
            raise AnalysisError("no test inputs passed through the BatchNorm layers")
        return {n: self.off[n].double().cpu() / self.seen[n] for n, _ in self.layers}


@contextmanager
def zeroed_features(model: nn.Module, masks: dict[str, torch.Tensor]):
    """Within the block, BN layer ``name``'s output is zero on the channels where ``masks[name]``."""
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():
        if not bool(mask.any()):
            continue
        keep = (~mask.bool()).to(torch.float32)

        def hook(module, inputs, out, keep=keep):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * keep.to(device=out.device, dtype=out.dtype).view(shape)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def random_masks(sizes: dict[str, int], n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``n`` features drawn uniformly without replacement over all layers, as per-layer masks."""
    total = sum(sizes.values())
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.from_numpy(rng.choice(total, size=n, replace=False))] = True
    return dict(zip(sizes, flat.split(list(sizes.values()))))
