"""Models built by name: each family registers a pattern over names, a builder, a help line and
example names in :data:`MODEL_FAMILIES`, where it is defined::

    @MODEL_FAMILIES.register(
        "toy_convnet", regex=r"toy_convnet_(?P<width>[1-9]\\d*)", patterns="toy_convnet_W (width W)",
        num_classes=10, input_shape=(3, 32, 32), help="two conv-BN-ReLU layers", examples=["toy_convnet_8"])
    def build(width: str, num_classes: int) -> nn.Module:
        ...

``create_model("toy_convnet_8")`` then builds and initializes it; tests build every family's
examples, and ``bnonly models`` lists them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bnonly.models.init import DEFAULT_WEIGHT_INIT, WEIGHT_INITS, check_gamma_init, check_weight_init, initialize

from ..errors import BnonlyError
from ..registry import Entry, Registry


class ModelNameError(BnonlyError, ValueError):
    """A name that matches a family's pattern but is not buildable (e.g. a bad depth)."""


MODEL_FAMILIES: Registry[Callable[..., nn.Module]] = Registry("model family", (
    "a builder build(**groups, num_classes) -> nn.Module, called with the named groups of `regex` (strings, "
    "None if absent) for a name that fully matches it; it raises ModelNameError for a name it cannot build "
    "and leaves initialization to create_model. Register it with regex=, patterns= (the forms shown to "
    "users), num_classes= (the default), input_shape= (C, H, W of one input), help= and examples= "
    "(names that build), and optionally weight_init= (its default weight distribution, a WEIGHT_INITS name; "
    "kaiming_normal, the paper's, if not given)"))


@dataclass(frozen=True)
class ModelFamily:
    """A registered family, as :func:`create_model` and ``bnonly models`` read it."""

    name: str
    build: Callable[..., nn.Module]
    regex: re.Pattern[str]
    patterns: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, ...]
    help: str
    examples: tuple[str, ...]
    weight_init: str = DEFAULT_WEIGHT_INIT

    @classmethod
    def of(cls, entry: Entry[Callable[..., nn.Module]]) -> ModelFamily:
        missing = [k for k in ("regex", "patterns", "num_classes", "input_shape") if k not in entry.extra]
        if missing:
            raise TypeError(f"model family {entry.name!r} was registered without {', '.join(missing)}; "
                            f"a family provides {MODEL_FAMILIES.contract}")
        x = entry.extra
        patterns = (x["patterns"],) if isinstance(x["patterns"], str) else tuple(x["patterns"])
        weight_init = x.get("weight_init", DEFAULT_WEIGHT_INIT)
        if weight_init not in WEIGHT_INITS:
            raise TypeError(f"model family {entry.name!r} was registered with weight_init={weight_init!r}, which is "
                            f"not one of {', '.join(WEIGHT_INITS)}")
        return cls(entry.name, entry.obj, re.compile(x["regex"]), patterns, x["num_classes"],
                   tuple(x["input_shape"]), entry.help, entry.examples, weight_init)


def model_families() -> list[ModelFamily]:
    """Every registered family, in registration order (the order names are matched in)."""
    return [ModelFamily.of(e) for e in MODEL_FAMILIES.entries()]


def list_models() -> list[str]:
    """The name patterns of every family, as shown to users."""
    return [p for family in model_families() for p in family.patterns]


def _invalid(name: object, reason: str) -> ValueError:
    valid = "\n".join(f"  {p}" for p in list_models())
    return ModelNameError(f"invalid model name {name!r}: {reason}\nValid model names:\n{valid}")


def family_of(name: str) -> ModelFamily:
    """The first family whose pattern fully matches ``name``; ModelNameError if none does."""
    if not isinstance(name, str):
        raise _invalid(name, "a model name is a string")
    family = next((f for f in model_families() if f.regex.fullmatch(name)), None)
    if family is None:
        raise _invalid(name, "it matches no known pattern")
    return family


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    gamma_init: str = "uniform",
    seed: int | None = 0,
    device: torch.device | str | None = None,
    weight_init: str | None = None,
) -> nn.Module:
    """Build the model called ``name`` and initialize it with :func:`initialize`.

    ``num_classes=None`` takes the family default. ``weight_init=None`` takes the family's default
    weight distribution (``kaiming_normal``, the paper's, for every family but the ViT, whose
    default is ``timm_vit``); a name from ``WEIGHT_INITS`` replaces it. ``device="meta"`` builds
    without memory or initialization (for counting parameters). Building never consumes the
    global RNG.
    """
    family = family_of(name)
    check_gamma_init(gamma_init)
    if weight_init is None:
        weight_init = family.weight_init
    check_weight_init(weight_init)
    if num_classes is None:
        num_classes = family.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")

    target = None if device is None else torch.device(device)
    on_meta = target is not None and target.type == "meta"
    # PyTorch's default init runs in the constructors; fork_rng keeps it off the caller's RNG.
    with torch.random.fork_rng(devices=[]), (torch.device("meta") if on_meta else contextlib.nullcontext()):
        try:
            model = family.build(**family.regex.fullmatch(name).groupdict(), num_classes=num_classes)
        except ModelNameError as e:
            raise _invalid(name, str(e)) from None
    initialize(model, gamma_init=gamma_init, seed=seed, weight_init=weight_init)
    if target is not None and not on_meta:
        model.to(target)
    return model
