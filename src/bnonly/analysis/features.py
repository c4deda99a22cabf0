"""Normalization features in a model: which layers are analysed, what their outputs feed, and
forward hooks that count a feature's off inputs or zero it.

Two functions decide what the analyses look at, and nothing else tests what a layer or a graph
node is: :func:`is_normalizer` (which modules are analysed: every kind of ``bnonly.layers.NORM_TYPES``)
and :func:`is_relu_like` (which consumers of their output are ReLU-like activations, and which of
:data:`ACTIVATIONS`). The helpers beside them only ask *which* normalizer a module is, for the
shape of its features and for labels.

A *feature* is one entry of a layer's γ: one channel of a BatchNorm, GroupNorm or InstanceNorm
(the output's dim 1), one hidden unit of a LayerNorm or RMSNorm (its ``normalized_shape``, the
output's last dims, as torch defines them). A feature is *off* for an input when the layer's output
is at most the activation's threshold at every position of that input: every spatial position of
an image, every token of a sequence (for a ViT: off for every token of the image), the one value
of a plain (N, features) output.
"""

from __future__ import annotations

import math
import operator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..layers import BATCHNORM_TYPES, NORM_TYPES, WEIGHT_TYPES
from .errors import AnalysisError

#: Where a normalizer's output goes, as analysis.json names the kinds, and as figures and tables
#: label them ({norms}: "BNs" where every layer is a BatchNorm, "norms" otherwise; see :func:`norms_word`).
DESTINATION_LABELS = {"relu_fed": "ReLU-fed {norms}", "other": "other {norms} (residual side)"}



def destination_label(kind: str, norms: str = "BNs") -> str:
    """The label of a destination kind, for layers called ``norms`` ("BNs" or "norms")."""
    return DESTINATION_LABELS[kind].replace("{norms}", norms)


_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
#: Normalizers whose features are the trailing ``normalized_shape`` dims of their output.
_TRAILING = (nn.LayerNorm,) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


@dataclass(frozen=True)
class Activation:
    """A ReLU-like activation: where its input counts as off, and the criterion in words."""

    threshold: float
    criterion: str
    modules: tuple[type[nn.Module], ...]
    functions: tuple
    methods: tuple[str, ...] = ()


#: The ReLU-like activations, by the name analysis.json gives them. A feature whose norm output
#: is <= ``threshold`` at every position of an input is off for that input.
ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(
        0.0, "ReLU: the norm output is <= 0 at every position, so the ReLU output is exactly 0",
        (nn.ReLU, nn.ReLU6), (F.relu, F.relu_, F.relu6, torch.relu, torch.relu_), ("relu", "relu_")),
    # GELU is never exactly 0 below 0; |GELU(x)| = |x|·Φ(x) falls monotonically for x < -0.75.
    "gelu": Activation(
        -3.0, "GELU: the norm output is <= -3 at every position, where |GELU(x)| <= 0.0041 "
              "(GELU(-3) = -3·Φ(-3) = -0.00405, 0.5% of GELU(1) = 0.84; tanh form -0.0036)",
        (nn.GELU,), (F.gelu,)),
}

# Graph nodes a norm's output may pass through on its way to an activation: layout only (the
# feature keeps its values), or a sum (a residual connection: the feature is one term of it).
_LAYOUT_METHODS = {"permute", "transpose", "reshape", "view", "flatten", "contiguous", "squeeze", "unsqueeze"}
_LAYOUT_FUNCTIONS = {torch.permute, torch.transpose, torch.reshape, torch.flatten, torch.squeeze, torch.unsqueeze}
_LAYOUT_MODULES = (nn.Identity, nn.Flatten, nn.Dropout)  # dropout is the identity in evaluation
_SUM_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_SUM_METHODS = {"add", "add_"}


def is_normalizer(module: nn.Module) -> bool:
    """Whether the analyses study ``module``: every normalization layer of ``bnonly.layers.NORM_TYPES``
    (BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm), found by type, never by name."""
    return isinstance(module, NORM_TYPES)


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every analysed normalization layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if is_normalizer(m)]


def norm_kind(module: nn.Module) -> str:
    """The normalizer's kind as tables name it: "BatchNorm", "InstanceNorm", "GroupNorm(G)",
    "LayerNorm", "RMSNorm" ("LayerNorm (GroupNorm(1))" for one group: LN over (C, H, W))."""
    if isinstance(module, BATCHNORM_TYPES):
        return "BatchNorm"
    if isinstance(module, _INSTANCE_NORMS):
        return "InstanceNorm"
    if isinstance(module, nn.GroupNorm):
        return "LayerNorm (GroupNorm(1))" if module.num_groups == 1 else f"GroupNorm({module.num_groups})"
    return "LayerNorm" if isinstance(module, nn.LayerNorm) else type(module).__name__


def normalizer_name(model: nn.Module) -> str:
    """The model's normalizers, as one label: their kinds in module order joined by "+", or "none"."""
    return "+".join(dict.fromkeys(norm_kind(m) for _, m in norm_layers(model))) or "none"


def norms_word(kinds) -> str:
    """"BNs" when every kind is a BatchNorm (the wording the paper's models have), else "norms"."""
    return "BNs" if all(k == "BatchNorm" for k in kinds) else "norms"


def feature_count(module: nn.Module) -> int:
    """Features of a normalizer: entries of its γ (whether or not it has one)."""
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, _TRAILING):
        return math.prod(module.normalized_shape)
    return module.num_features


def feature_dims(module: nn.Module, out: torch.Tensor) -> tuple[int, ...]:
    """The dims of the normalizer's output that index its features (the rest are positions)."""
    if isinstance(module, _TRAILING):
        return tuple(range(out.dim() - len(module.normalized_shape), out.dim()))
    return (1,)


def affine_values(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(γ, β) per feature as float CPU tensors; a layer without them acts as γ = 1, β = 0 (RMSNorm
    has no β)."""
    n = feature_count(module)
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    gamma = weight.detach().float().cpu().flatten() if weight is not None else torch.ones(n)
    beta = bias.detach().float().cpu().flatten() if bias is not None else torch.zeros(n)
    return gamma, beta


# --- where outputs go ---------------------------------------------------------------------------

def is_relu_like(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """Which ReLU-like activation a node of an fx graph applies (module, function or tensor
    method): a name of :data:`ACTIVATIONS`, or None if it applies none."""
    for name, act in ACTIVATIONS.items():
        if ((node.op == "call_module" and isinstance(modules[node.target], act.modules))
                or (node.op == "call_method" and node.target in act.methods)
                or (node.op == "call_function" and node.target in act.functions)):
            return name
    return None


@dataclass(frozen=True)
class Destination:
    """Where a normalizer's output goes. ``kind``: "relu_fed" (straight into one kind of ReLU-like
    activation), "other" (into it through a residual sum), or None with ``not_applicable`` saying
    why no activation decides whether a feature is off."""

    kind: str | None
    activation: str | None
    not_applicable: str | None = None


class _Tracer(fx.Tracer):
    """Traces into modules that hold a normalizer or an activation; every other module is a leaf
    (an attention block's shape arithmetic, say, says nothing about where a norm's output goes).
    ``coarse``: leaves also where only activations are inside."""

    def __init__(self, coarse: bool):
        super().__init__()
        self.coarse = coarse

    def _matters(self, module: nn.Module) -> bool:
        return is_normalizer(module) or (not self.coarse and _is_activation_module(module))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return self._matters(m) or not any(self._matters(s) for s in m.modules())


def _is_activation_module(module: nn.Module) -> bool:
    return any(isinstance(module, act.modules) for act in ACTIVATIONS.values())


def _trace(module: nn.Module) -> tuple[fx.Graph | None, str | None]:
    """The module's graph, or (None, why fx cannot trace it)."""
    error = None
    for coarse in (False, True):
        try:
            return _Tracer(coarse).trace(module), None
        except Exception as e:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
            error = error or f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None, error


def _traced_parts(module: nn.Module, prefix: str = "") -> tuple[list[tuple[str, nn.Module, fx.Graph]], dict[str, str]]:
    """The largest parts of ``module`` fx can trace, as (name prefix, part, graph): the whole where
    it can, else its children that hold normalizers (recursively); and part -> error for each part
    it could not trace ("" is the whole model)."""
    graph, error = _trace(module)
    if graph is not None:
        return [(prefix, module, graph)], {}
    parts, errors = [], {prefix.rstrip("."): error}
    for name, child in module.named_children():
        if not is_normalizer(child) and any(is_normalizer(m) for m in child.modules()):
            more, more_errors = _traced_parts(child, f"{prefix}{name}.")
            parts += more
            errors |= more_errors
    return parts, errors


def _what(node: fx.Node, modules: dict[str, nn.Module], part: str) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} ({part}{node.target})"
    if node.op == "output":
        return "the model's output"
    return getattr(node.target, "__name__", str(node.target))


def _follow(node: fx.Node, modules: dict[str, nn.Module], part: str) -> Destination:
    """Follow a norm's output through layout nodes and sums to the activations it reaches."""
    reached, summed_any, todo = set(), False, [(user, False) for user in node.users]
    while todo:
        user, summed = todo.pop()
        act = is_relu_like(user, modules)
        if act:
            reached.add(act)
            summed_any |= summed
            continue
        is_sum = ((user.op == "call_function" and user.target in _SUM_FUNCTIONS)
                  or (user.op == "call_method" and user.target in _SUM_METHODS))
        layout = ((user.op == "call_method" and user.target in _LAYOUT_METHODS)
                  or (user.op == "call_function" and user.target in _LAYOUT_FUNCTIONS)
                  or (user.op == "call_module" and isinstance(modules[user.target], _LAYOUT_MODULES)))
        if user.op == "output" and part:
            return Destination(None, None, f"its output leaves {part.rstrip('.')}, and fx could not trace what uses it")
        if not (is_sum or layout):
            return Destination(None, None, f"feeds {_what(user, modules, part)}, not a ReLU-like activation")
        todo += [(u, summed or is_sum) for u in user.users]
    if not reached:
        return Destination(None, None, "its output is not used")
    if len(reached) > 1:
        return Destination(None, None, f"feeds several kinds of activation ({', '.join(sorted(reached))})")
    return Destination("other" if summed_any else "relu_fed", reached.pop())


def destinations(model: nn.Module) -> tuple[dict[str, Destination], dict[str, str]]:
    """Where each normalization layer's output goes (by layer name), and the parts of the model fx
    could not trace (part name -> error; "" is the whole model; empty when it traced it all).

    Tracing sees the real data flow: a module's place in ``named_modules`` does not say whether a
    residual sum comes before its ReLU. Where fx cannot trace the whole model (control flow on
    data or shapes), the largest parts it can trace are traced instead; a layer whose output leaves
    its part, or that lies in no traced part, has no destination: its disabled features are not
    applicable."""
    parts, errors = _traced_parts(model)
    found: dict[str, Destination] = {}
    for prefix, part, graph in parts:
        modules = dict(part.named_modules())
        for node in graph.nodes:
            if node.op == "call_module" and is_normalizer(modules[node.target]):
                d, name = _follow(node, modules, prefix), prefix + node.target
                if name in found and found[name] != d:  # a layer called twice, its outputs going two ways
                    d = Destination(None, None, "it is called more than once, with outputs going different ways")
                found[name] = d
    out = {}
    for name, _ in norm_layers(model):
        if name in found:
            out[name] = found[name]
            continue
        part = max((p for p in errors if not p or name.startswith(p + ".")), key=len, default=None)
        out[name] = Destination(None, None, "it is not called in the model's forward" if part is None else
                                f"fx could not trace {part or 'the model'} ({errors[part]}), so where its output "
                                "goes is unknown")
    return out, errors


#: Modules whose output channel c holds their input channel c (and nothing else).
_CHANNEL_KEEPING = (nn.Identity, nn.Dropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                    nn.AvgPool3d)


def weight_neighbours(model: nn.Module) -> dict[str, tuple[str | None, list[str]]]:
    """Per normalization layer, the conv/linear layers around it in the traced data flow: the one
    whose output it normalizes directly (its feature c is that layer's output channel c, i.e.
    weight row c), or None; and those that take its output through ReLU-like activations,
    pooling, identity and dropout only, each of which keeps feature c in channel c (they read it
    through weight column c). A residual sum ends the search (the sum's channel c has more than
    one source), as does a reshape or anything else."""
    found: dict[str, tuple[str | None, list[str]]] = {}
    for prefix, part, graph in _traced_parts(model)[0]:
        modules = dict(part.named_modules())
        for node in graph.nodes:
            if not (node.op == "call_module" and is_normalizer(modules[node.target])):
                continue
            source = node.args[0] if node.args else None
            producer = (prefix + source.target if isinstance(source, fx.Node) and source.op == "call_module"
                        and isinstance(modules[source.target], WEIGHT_TYPES) else None)
            readers, todo, seen = [], list(node.users), set()
            while todo:
                user = todo.pop()
                if user in seen:
                    continue
                seen.add(user)
                if user.op == "call_module" and isinstance(modules[user.target], WEIGHT_TYPES):
                    readers.append(prefix + user.target)
                elif is_relu_like(user, modules) or (user.op == "call_module"
                                                     and isinstance(modules[user.target], _CHANNEL_KEEPING)):
                    todo += list(user.users)
            found[prefix + node.target] = (producer, sorted(readers))
    return found


def split_by_destination(masks: dict[str, torch.Tensor], kinds: dict[str, str]) -> dict[str, dict]:
    """{"relu_fed": masks of the ReLU-fed layers, "other": masks of the rest}, leaving out an empty
    kind; ``kinds`` maps a layer to its destination kind."""
    split = {kind: {n: m for n, m in masks.items() if kinds[n] == kind} for kind in DESTINATION_LABELS}
    return {kind: kind_masks for kind, kind_masks in split.items() if kind_masks}


# --- hooks: counting off features, zeroing features ------------------------------------------

def _active(module: nn.Module, out: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, features) bool: the feature's output is above ``threshold`` somewhere, so the
    activation passes something."""
    above = out.detach() > threshold
    dims = feature_dims(module, above)
    positions = [d for d in range(1, above.dim()) if d not in dims]
    n_features = math.prod(above.shape[d] for d in dims)
    return above.permute(0, *positions, *dims).reshape(above.shape[0], -1, n_features).any(1)


class OffCounter:
    """While active, counts per feature of each layer the inputs whose output is at most the
    layer's threshold everywhere (``thresholds``: layer name -> threshold; default 0, ReLU's)."""

    def __init__(self, layers: list[tuple[str, nn.Module]], thresholds: dict[str, float] | None = None):
        self.layers = layers
        self.thresholds = thresholds or {}
        self.off: dict[str, torch.Tensor] = {}
        self.seen: dict[str, int] = {}
        self._handles = []

    def _hook(self, name: str):
        threshold = self.thresholds.get(name, 0.0)

        def hook(module, inputs, out):
            off = (~_active(module, out, threshold)).sum(0)
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
        """Layer name -> per-feature off share in [0, 1] (float64, CPU)."""
        unseen = [n for n, _ in self.layers if not self.seen.get(n)]
        if unseen:
            raise AnalysisError(f"no test inputs passed through the normalization layer(s) {', '.join(unseen)}")
        return {n: self.off[n].double().cpu() / self.seen[n] for n, _ in self.layers}


@contextmanager
def zeroed_features(model: nn.Module, masks: dict[str, torch.Tensor]):
    """Within the block, layer ``name``'s output is zero on the features where ``masks[name]``."""
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():
        if not bool(mask.any()):
            continue
        keep = (~mask.bool()).to(torch.float32)

        def hook(module, inputs, out, keep=keep):
            shape = [1] * out.dim()
            for d in feature_dims(module, out):
                shape[d] = out.shape[d]
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
