"""Models built by name: each family registers a regular expression over names and a builder."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bnonly.models.init import check_gamma_init, initialize
from ..errors import BnonlyError


class ModelNameError(BnonlyError, ValueError):
    """A name that matches a family's pattern but is not buildable (e.g. a bad depth)."""


@dataclass(frozen=True)
class _Family:
    regex: re.Pattern[str]
    patterns: tuple[str, ...]
    num_classes: int
    build: Callable[..., nn.Module]


_FAMILIES: list[_Family] = []


def register_family(regex: str, patterns: tuple[str, ...] | str, *, num_classes: int):
    """Register ``build(**named_groups, num_classes=...)`` for names that fully match ``regex``.

    ``patterns`` are the human-readable forms shown by :func:`list_models` and in errors. The
    builder raises :class:`ModelNameError` for names it cannot build.
    """
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)

    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _FAMILIES.append(_Family(re.compile(regex), patterns, num_classes, build))
        return build

    return decorator


def list_models() -> list[str]:
    return [p for family in _FAMILIES for p in family.patterns]


def _invalid(name: object, reason: str) -> ValueError:
    valid = "\n".join(f"  {p}" for p in list_models())
    return ModelNameError(f"invalid model name {name!r}: {reason}\nValid model names:\n{valid}")


def create_model(
    name: str,
    num_classes: int | None = None,
    *,
    gamma_init: str = "uniform",
    seed: int | None = 0,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Build the model called ``name`` and initialize it with :func:`initialize`.

    ``num_classes=None`` takes the family default. ``device="meta"`` builds without memory or
    initialization (for counting parameters). Building never consumes the global RNG.
    """
    if not isinstance(name, str):
        raise _invalid(name, "a model name is a string")
    family = next((f for f in _FAMILIES if f.regex.fullmatch(name)), None)
    if family is None:
        raise _invalid(name, "it matches no known pattern")
    check_gamma_init(gamma_init)
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
    initialize(model, gamma_init=gamma_init, seed=seed)
    if target is not None and not on_meta:
        model.to(target)
    return model
