"""Argparse types for the command line's numeric options that are not config fields
(parallelism, Slurm resources, benchmark budgets): ``type=option(int, at_least(1))``. They take
their bounds from ``bnonly.config``'s ``Allowed`` (the same checks and wording as the fields), so
argparse itself refuses a value out of range, before anything runs, naming the option
("argument --jobs: 0 is out of range: allowed >= 1")."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .config import Allowed


def option(kind: type, allowed: Allowed) -> Callable[[str], float]:
    """A parser of ``kind`` (int or float) values within ``allowed``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not allowed.check(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: allowed {allowed.text}")
        return value

    return parse
