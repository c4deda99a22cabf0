"""The analysis's one error type (its own module so every part of the package can raise it)."""

from __future__ import annotations

from ..errors import BnonlyError


class AnalysisError(BnonlyError, ValueError):
    """A run or model that cannot be analysed (unfinished run, no BatchNorm layers, bad option, ...)."""
