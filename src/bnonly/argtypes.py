"""Types for the command line's numeric options (``type=at_least(int, 1)``): argparse itself then
refuses a value out of range, before anything runs, naming the option and its bounds
("argument --jobs: 0 is out of range: allowed >= 1"). Config fields have their own bounds
(``bnonly.config``); these are for options that are not fields: parallelism, Slurm resources,
benchmark budgets."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def at_least(kind: type, low: float, *, strict: bool = False) -> Callable[[str], float]:
    """A parser of ``kind`` (int or float) values >= ``low`` (> ``low`` when ``strict``)."""
    bound = f"{'>' if strict else '>='} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text} is out of range: allowed {bound}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


def positive(kind: type) -> Callable[[str], float]:
    """A parser of ``kind`` values > 0 (seconds, gigabytes)."""
    return at_least(kind, 0, strict=True)
