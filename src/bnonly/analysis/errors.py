"""The analysis's error type and its one warning (their own module so every part of the package can raise them)."""

from __future__ import annotations

from ..errors import BnonlyError


class AnalysisError(BnonlyError, ValueError):
    """A run or model that cannot be analysed (unfinished run, no BatchNorm layers, bad option, ...)."""


class WeightsAbsent(UserWarning):
    """A run's analysis.json was kept although some sections are out of date: its weights are not there
    to redo them (a run kept as its small files, as results/ folders hold them)."""
