"""Evaluators: the registered analyses, each computing its own versioned section of analysis.json
and declaring the numbers it hands to ``bnonly report``.

An evaluator is registered by name in :data:`EVALUATORS` (usually with the :func:`evaluator`
decorator) and holds its format version, the analysis options it reads, the evaluators whose
sections it reads (``needs``, registered before it), a compute function ``(ctx, options) ->
section`` and its report :class:`Column` s. :func:`analyze_model` runs them in registration order
on one :class:`AnalysisContext`, which finds what is costly once for all of them (the fx trace, the
baseline pass over the test set), and keeps every given section that is still fresh: a section is
recomputed when its version or options differ from the evaluator's, or when a section it needs is
recomputed (so a file never mixes a fresh section with one derived from what it replaced).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ..registry import Registry
from ..training import evaluate
from .errors import AnalysisError
from .features import ACTIVATIONS, Destination, OffCounter, destinations, norm_layers, zeroed_features

DEFAULT_THRESHOLDS = (0.01, 0.05, 0.1)
DEFAULT_DEAD_SHARE = 0.99
DEFAULT_DRAWS = 5
#: The tables of report.md that columns can join: "learned" is "What BatchNorm learned" (one
#: row per model x what trains), "by_destination" the split by where each BN's output goes.
REPORT_TABLES = ("learned", "by_destination")
_UNITS = ("%", "count")


@dataclass(frozen=True)
class Column:
    """One number per run that an evaluator hands to ``bnonly report``: a column of runs.csv (its
    mean and std over seeds in groups.csv) and, given a ``label``, of a report.md table.

    ``get`` pulls the number out of the evaluator's section (None where there is none). A ``name``
    holding ``{key}`` declares a family: ``get`` returns ``{key: number}`` and each key becomes a
    column (``gamma_below_{key}`` -> ``gamma_below_0.05``), labelled with ``key_label(key)`` in
    place of ``{key}``. Consecutive family columns of one evaluator are laid out key by key (each
    key's columns side by side), keys sorted by the first one's ``key_order`` (default: as the
    sections list them, which after a round trip through analysis.json is alphabetical).
    In a table a cell shows the mean over seeds with ``spread``: "seeds" (± the std over seeds),
    None (no spread) or another column's name (± that column's mean over seeds, e.g. a std over
    random draws). ``unit`` "%" shows a fraction in percent, "count" a whole number (no spread).
    """

    name: str
    get: Callable[[dict], Any]
    label: str = ""
    table: str = "learned"
    spread: str | None = "seeds"
    unit: str = "%"
    key_label: Callable[[str], str] = str
    key_order: Callable[[str], Any] | None = None

    def __post_init__(self):
        if self.table not in REPORT_TABLES:
            raise AnalysisError(f"column {self.name!r}: table must be one of {REPORT_TABLES}; got {self.table!r}")
        if self.unit not in _UNITS or (self.unit == "count" and self.spread is not None):
            raise AnalysisError(f"column {self.name!r}: unit must be '%' or 'count' (without spread); "
                                f"got {self.unit!r} with spread {self.spread!r}")

    @property
    def family(self) -> bool:
        return "{key}" in self.name

    def values(self, section: dict) -> dict[str, Any]:
        """Column name -> this run's number (a family gives one entry per key)."""
        if not self.family:
            return {self.name: self.get(section)}
        return {self.name.replace("{key}", k): v for k, v in (self.get(section) or {}).items()}


@dataclass(frozen=True)
class Evaluator:
    """One analysis: ``compute(ctx, options)`` returns its section of analysis.json (a JSON-ready
    dict; the runner adds ``version``, ``options`` and ``seconds``). A section whose analysis does not
    apply to the model holds ``not_applicable``, the reason, and nulls for the numbers it lacks; the
    report shows those as "n/a". ``options`` names the analysis options it reads (keys of
    :func:`analysis_options`); ``needs`` the evaluators whose sections it reads from ``ctx.sections``;
    ``summary(section)`` gives its lines of ``bnonly analyze``'s output."""

    version: int
    compute: Callable[[AnalysisContext, dict], dict]
    options: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    summary: Callable[[dict], list[str]] | None = None

    def __post_init__(self):
        unknown = set(self.options) - set(analysis_options())
        if unknown:
            raise AnalysisError(f"unknown options {sorted(unknown)}; known: {', '.join(analysis_options())}")
        names = {c.name for c in self.columns}
        spreads = {c.spread for c in self.columns} - {None, "seeds"} - names
        if spreads:
            raise AnalysisError(f"spread {sorted(spreads)} names no column of this evaluator")

    def options_of(self, options: dict) -> dict:
        return {k: options[k] for k in self.options}


EVALUATORS: Registry[Evaluator] = Registry(
    "evaluator", "an Evaluator: version, compute(ctx, options) -> its section of analysis.json, report columns")


def evaluator(name: str, *, version: int, options=(), needs=(), columns=(), summary=None, replace: bool = False):
    """Decorator: register the decorated ``compute(ctx, options)`` as evaluator ``name`` (its
    docstring's first line is the help text); returns the function unchanged."""

    def register(compute):
        try:
            spec = Evaluator(version, compute, tuple(options), tuple(needs), tuple(columns), summary)
        except AnalysisError as e:
            raise AnalysisError(f"evaluator {name!r}: {e}") from None
        EVALUATORS.register(name, spec, help=(compute.__doc__ or "").strip().split("\n")[0], replace=replace)
        return compute

    return register


def analysis_options(thresholds=DEFAULT_THRESHOLDS, dead_share: float = DEFAULT_DEAD_SHARE,
                     draws: int = DEFAULT_DRAWS, seed: int = 0) -> dict:
    """The options every evaluator chooses from, checked, in the form sections record them."""
    if not 0 < dead_share <= 1:
        raise AnalysisError(f"dead_share must be in (0, 1]; got {dead_share}")
    if draws < 1:
        raise AnalysisError(f"draws must be at least 1; got {draws}")
    return dict(thresholds=sorted(float(t) for t in thresholds), dead_share=dead_share, draws=draws, seed=seed)


class AnalysisContext:
    """What the evaluators of one analysis share: the model, its test set and how to evaluate it,
    the sections computed or kept so far, and what is costly to find, each found once when first
    asked for (the fx trace; the baseline pass over the test set, with the off counter on)."""

    def __init__(self, model: nn.Module, test_batches, *, init_state: dict[str, torch.Tensor] | None = None,
                 bf16: bool = False, device: torch.device | str = "cpu", train: str | None = None):
        self.model, self.test_batches, self.init_state = model, test_batches, init_state
        self.train = train  # the run's what-trains spec where known (None: a model analysed alone)
        self.bf16, self.device = bf16, torch.device(device)
        self.sections: dict[str, dict] = {}

    @cached_property
    def layers(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of every analysed normalization layer, in module order."""
        return norm_layers(self.model)

    @cached_property
    def traced(self) -> tuple[dict[str, Destination], dict[str, str]]:
        """(layer name -> where its output goes, the parts fx could not trace -> why; "" the whole model)."""
        return destinations(self.model)

    @property
    def destinations(self) -> dict[str, Destination]:
        return self.traced[0]

    @cached_property
    def measured(self) -> list[tuple[str, nn.Module]]:
        """The layers whose output reaches a ReLU-like activation: where disabled features are measured."""
        return [(name, m) for name, m in self.layers if self.destinations[name].activation is not None]

    @cached_property
    def baseline(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(test metrics with ``n_examples``, off shares of the measured layers) from one pass over the test set."""
        counter = OffCounter(self.measured, {name: ACTIVATIONS[self.destinations[name].activation].threshold
                                             for name, _ in self.measured})
        with counter:
            test = evaluate(self.model, self.test_batches, bf16=self.bf16, device=self.device)
        return dict(test, n_examples=self.test_batches.num_examples), counter.shares()

    def accuracy(self, zeroed: dict[str, torch.Tensor]) -> float:
        """Test accuracy with the outputs of the ``zeroed`` features set to zero (one pass)."""
        with zeroed_features(self.model, zeroed):
            return evaluate(self.model, self.test_batches, bf16=self.bf16, device=self.device)["test_acc"]


def stale_sections(kept: dict[str, dict], options: dict) -> list[str]:
    """The registered evaluators whose sections must be computed, given the ``kept`` ones."""
    stale, seen = [], set()
    for entry in EVALUATORS.entries():
        e, section = entry.obj, kept.get(entry.name)
        missing = [n for n in e.needs if n not in seen]
        if missing:
            raise AnalysisError(f"evaluator {entry.name!r} needs {missing}, which are not registered before it")
        if (section is None or section.get("version") != e.version or section.get("options") != e.options_of(options)
                or any(n in stale for n in e.needs)):
            stale.append(entry.name)
        seen.add(entry.name)
    return stale


def analyze_model(model: nn.Module, test_batches, *, init_state: dict[str, torch.Tensor] | None = None,
                  thresholds=DEFAULT_THRESHOLDS, dead_share: float = DEFAULT_DEAD_SHARE, draws: int = DEFAULT_DRAWS,
                  seed: int = 0, bf16: bool = False, device: torch.device | str = "cpu",
                  kept: dict[str, dict] | None = None, train: str | None = None) -> dict[str, dict]:
    """Every registered evaluator's section for ``model`` on ``test_batches`` (name -> section).

    ``init_state`` (a plain state dict of the initial weights) adds the initial γ/β for
    comparison; ``train``, the run's what-trains spec, tells the evaluators that need it (``supermask``)
    how the model was trained. Sections of ``kept`` (a previous analysis of the same model) that are still fresh
    are returned as they are; sections of evaluators no longer registered are kept too.
    """
    options = analysis_options(thresholds, dead_share, draws, seed)
    kept = kept or {}
    ctx = AnalysisContext(model, test_batches, init_state=init_state, bf16=bf16, device=device, train=train)
    stale = stale_sections(kept, options)
    for entry in EVALUATORS.entries():
        e = entry.obj
        if entry.name not in stale:
            ctx.sections[entry.name] = kept[entry.name]
            continue
        started = time.perf_counter()
        section = e.compute(ctx, e.options_of(options))
        ctx.sections[entry.name] = dict(section, version=e.version, options=e.options_of(options),
                                        seconds=round(time.perf_counter() - started, 3))
    return ctx.sections | {name: s for name, s in kept.items() if name not in EVALUATORS}


def column_values(analysis: dict) -> dict[str, Any]:
    """Column name -> this run's number, for every column of every registered evaluator whose
    section ``analysis`` holds (a row of runs.csv); and ``<evaluator>_not_applicable`` -> the
    reason, for a section that says the analysis does not apply to the model."""
    row = {}
    for entry in EVALUATORS.entries():
        section = analysis["sections"].get(entry.name)
        if section is not None:
            for column in entry.obj.columns:
                row.update(column.values(section))
            if section.get("not_applicable"):
                row[not_applicable_column(entry.name)] = section["not_applicable"]
    return row


def not_applicable_column(evaluator_name: str) -> str:
    """The runs.csv column holding why an evaluator's analysis does not apply to a run's model."""
    return f"{evaluator_name}_not_applicable"

