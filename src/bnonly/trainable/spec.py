"""The what-trains language: a registry of terms, and a spec (terms joined by ``+``) resolved into masks.

Each term is registered in :data:`TERMS` with its syntax, the parser of its argument, a help line
and a selector ``select(model, arg, ctx) -> {parameter name: True | bool mask | Scored}``; a spec
trains the union of its terms' selections. ``Scored`` (``supermask.py``) puts a conv/linear weight
under a supermask: its scores train and the weight itself stays frozen, so a weight that one term
scores no other term may train. The spec help and the term table of docs/what-trains.md are generated
from the registry, so a new term documents itself::

    @TERMS.register("first-bn", help="γ and β of the first BatchNorm layer")
    def first_bn(model, arg, ctx):
        name, _ = layers.layers_of(model, layers.BATCHNORM_TYPES)[0]
        return {layers.qualified_name(name, p): True for p in layers.AFFINE}

(``tests/test_extending.py`` registers and trains exactly this term.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import layers
from ..errors import BnonlyError
from ..registry import Registry
from .supermask import Scored


class SpecError(BnonlyError, ValueError):
    """A what-trains spec that cannot be parsed or applied."""


@dataclass(frozen=True)
class SelectContext:
    """What a selector may draw from. ``seed``: the selection seed; ``index``: the term's position
    in the spec (so that ``random:10+random:10`` draws twice); ``generator``: a CPU generator
    seeded with ``seed`` and shared by the spec's terms in order; ``term``: the term as written,
    for messages."""

    seed: int
    index: int
    term: str
    generator: torch.Generator


Selector = Callable[[nn.Module, Any, SelectContext], dict[str, bool | torch.Tensor]]

TERMS: Registry[Selector] = Registry("what-trains term", (
    "a selector select(model, arg, ctx) -> {parameter name: True (whole tensor) | bool mask of its shape | "
    "Scored (a supermask: trainable scores of its shape; the tensor itself stays frozen)}, finding layers "
    "by module type (bnonly.layers); it raises SpecError when it selects nothing. Register it "
    "with help= (one line, Markdown), and for a term that takes an argument ('name:ARG') with parse= "
    "(str -> arg, raising ValueError) and syntax= (e.g. 'random:matched|N'). Names hold no '+' or ':'"))


@dataclass
class Selection:
    """What trains: parameter name -> ``True`` (whole tensor) or a bool mask of entries; and the
    weights under a supermask (``scored``: name -> :class:`Scored`), whose scores train instead."""

    spec: str
    seed: int
    masks: dict[str, bool | torch.Tensor] = field(default_factory=dict)
    scored: dict[str, Scored] = field(default_factory=dict)

    def num_trainable(self, model: nn.Module) -> int:
        sizes = dict((n, p.numel()) for n, p in model.named_parameters())
        return (sum(sizes[n] if m is True else int(m.sum()) for n, m in self.masks.items())
                + sum(s.scores.numel() for s in self.scored.values()))


def syntax(name: str) -> str:
    """How term ``name`` is written: its registered ``syntax``, else its name."""
    return TERMS.entry(name).extra.get("syntax", name)


def spec_help() -> str:
    """One line listing every registered term (``--train``'s help and every spec error say it)."""
    return f"terms joined by '+': {', '.join(map(syntax, TERMS))} (e.g. 'bn+output')"


def term_table_markdown() -> str:
    """The Markdown table of every registered term and what it trains (the table of docs/what-trains.md).
    A '|' in a cell is escaped, as a table needs even inside backticks."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = [f"| `{cell(syntax(e.name))}` | {cell(e.help)} |" for e in TERMS.entries()]
    return "\n".join(["| term | trains |", "|---|---|", *rows])


def _parse_term(term: str, spec: str) -> tuple[str, Any]:
    name, colon, raw = term.partition(":")
    if name not in TERMS:
        raise SpecError(f"unknown what-trains term {term!r} in {spec!r}; valid: {spec_help()}")
    parse = TERMS.entry(name).extra.get("parse")
    if parse is None and not colon:
        return name, None
    if parse is None or not colon:
        needs = "takes an argument" if parse is not None else "takes no argument"
        raise SpecError(f"what-trains term {term!r} in {spec!r}: '{name}' {needs}; valid: {spec_help()}")
    try:
        return name, parse(raw)
    except ValueError as e:
        raise SpecError(f"what-trains term {term!r} in {spec!r}: {e}; valid: {spec_help()}") from None


def _parsed(spec: str) -> list[tuple[str, str, Any]]:
    """(term as written, term name, parsed argument) for every term of ``spec``."""
    terms = [t.strip() for t in str(spec).split("+")]
    return [(t, *_parse_term(t, spec)) for t in terms]


def parse_spec(spec: str) -> list[str]:
    """Split and validate a spec; raises :class:`SpecError` naming the bad term."""
    return [term for term, _, _ in _parsed(spec)]


def _checked(term: str, chosen: dict, params: dict[str, nn.Parameter]) -> dict:
    """A selector's result, refused unless it names real parameters with whole-tensor bool masks
    (or scores of the parameter's shape)."""
    for name, mask in chosen.items():
        if name not in params:
            raise ValueError(f"what-trains term {term!r} selected {name!r}, which is not a parameter of the model")
        if isinstance(mask, Scored):
            if mask.scores.shape != params[name].shape or not 1 <= mask.keep <= mask.scores.numel():
                raise ValueError(f"what-trains term {term!r} gave {name!r} scores of shape "
                                 f"{tuple(mask.scores.shape)} keeping {mask.keep}; the tensor has shape "
                                 f"{tuple(params[name].shape)}")
        elif mask is not True and not (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool
                                     and mask.shape == params[name].shape):
            raise ValueError(f"what-trains term {term!r} gave {name!r} a mask that is neither True nor a bool "
                             f"tensor of shape {tuple(params[name].shape)}")
    return chosen


def select(model: nn.Module, spec: str, seed: int = 0, *, bn_affine: bool = True) -> Selection:
    """Resolve ``spec`` on ``model`` into a :class:`Selection` (does not modify the model).

    With ``bn_affine=False`` BatchNorm γ/β are fixed (see ``disable_bn_affine``): no term trains
    them, and a term that would train nothing else is an error.
    """
    parsed = _parsed(spec)
    params = dict(model.named_parameters())
    fixed = set() if bn_affine else set(layers.affine_params(model, layers.BATCHNORM_TYPES))
    gen = torch.Generator().manual_seed(seed)
    union: dict[str, bool | torch.Tensor] = {}
    scored: dict[str, Scored] = {}
    by: dict[str, str] = {}  # which term first chose each tensor, for messages
    for i, (term, name, arg) in enumerate(parsed):
        chosen = _checked(term, TERMS.get(name)(model, arg, SelectContext(seed, i, term, gen)), params)
        kept = {n: m for n, m in chosen.items() if n not in fixed}
        if chosen and not kept:
            raise SpecError(f"{term!r} trains only BatchNorm γ/β here, but the BN affine is disabled "
                            "(bn_affine=False)")
        for n, mask in kept.items():
            # A scored weight stays frozen: training it too (or scoring it twice) has no one meaning.
            if isinstance(mask, Scored) or n in scored:
                if n in scored or n in union:
                    raise SpecError(f"{spec!r}: {term!r} and {by[n]!r} both choose {n}, and a weight under a "
                                    f"supermask is neither trained nor scored by another term; drop one of them "
                                    f"(e.g. 'bn+supermask:50', whose terms choose different tensors)")
                scored[n], by[n] = mask, term
                continue
            by.setdefault(n, term)
            old = union.get(n, False)
            union[n] = True if old is True or mask is True else (mask if old is False else old | mask)
    for n, m in list(union.items()):
        if isinstance(m, torch.Tensor) and bool(m.all()):
            union[n] = True
    return Selection(spec=spec, seed=seed, masks=union, scored=scored)
