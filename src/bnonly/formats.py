"""The files of a run that users' scripts read, their format numbers, and the readers that bring
every older format to today's.

Each file carries its format: ``"format": N`` at the top level of config.json, summary.json and
analysis.json, in every row of metrics.jsonl, and in a compact file's payload. A file without the
key is format 1 (bnonly 0.1 wrote none; analysis.json format 1 and 2 said ``"version"`` instead).
Each format has a JSON Schema shipped with the package (``bnonly/schemas/KIND.schema.json``,
:func:`schema`), and the readers here (config, summary, metrics) or in ``bnonly.analysis``
(analysis.json) and ``bnonly.compact`` turn any older file into today's structure, so a script
written against today's format reads every run bnonly ever wrote. A file from a *newer* bnonly is
refused with :class:`~bnonly.errors.FormatError` naming the upgrade, never misread.

A format changes only with its number, a reader for the old one here, a fixture of the old file
in tests/fixtures/formats/ and a line in CHANGELOG.md.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from .errors import FormatError

CONFIG_FORMAT = 3
SUMMARY_FORMAT = 3
METRICS_FORMAT = 2
ANALYSIS_FORMAT = 3
COMPACT_FORMAT = 1
CURRENT = {"config": CONFIG_FORMAT, "summary": SUMMARY_FORMAT, "metrics": METRICS_FORMAT,
           "analysis": ANALYSIS_FORMAT, "compact": COMPACT_FORMAT}
FILES = {"config": "config.json", "summary": "summary.json", "metrics": "metrics.jsonl",
         "analysis": "analysis.json", "compact": "compact file"}

#: What each format number of each file holds, oldest first (docs/formats.md is generated from it).
HISTORY: dict[str, dict[int, str]] = {
    "config": {
        1: "every TrainConfig field by name, no format key (bnonly 0.1; fields added later are absent in older "
           "files and read as their defaults, which change nothing)",
        2: "the same fields plus `\"format\": 2` (bnonly 0.2)",
        3: "adds `fused_norm` (the fused BatchNorm-ReLU kernel on the CPU; absent in older files, read as not "
           "given: those runs trained unfused and their summaries say so) (bnonly 0.3)"},
    "summary": {
        1: "no format key (bnonly 0.1); the earliest files have `bf16` and `channels_last` at the top level instead "
           "of `compute`, no `bn_statistics` and no `norm_params`",
        2: "`\"format\": 2`; `compute` holds the compute settings, `bn_statistics` which statistics BatchNorm used "
           "(bnonly 0.2)",
        3: "`compute` gains `fused_norm`; older summaries read with `fused_norm: false` (those runs trained "
           "without the kernel) (bnonly 0.3)"},
    "metrics": {
        1: "one JSON object per evaluation, no format key (bnonly 0.1)",
        2: "the same rows, each with `\"format\": 2` (bnonly 0.2)"},
    "analysis": {
        1: "one flat object with `\"version\": 1`: γ/β statistics, disabled features and the ablation at the top "
           "level (`fraction_gamma_below`, `fraction_dead`, ...)",
        2: "`\"version\": 2`: as 1, with the disabled features split by where each BatchNorm's output goes "
           "(`fraction_dead_relu_fed`, `by_destination`)",
        3: "`\"format\": 3`: one versioned section per evaluator under `sections` (`affine`, `disabled`, "
           "`ablation`, yours), each with its `version`, `options` and `seconds`"},
    "compact": {1: "`\"format\": 1`: config, summary, class count, digest, the trained entries and the buffers"},
}

#: The BatchNorm statistics of runs from before summary.json recorded them: batch statistics in
#: training, the running averages in evaluation (the only ones there were).
PRE_RECORD_BN_STATISTICS = {"train": "batch", "eval": "running averages"}


def found_format(kind: str, obj: Any, where: str) -> int:
    """The format number of ``obj`` (the parsed content of a ``kind`` file found at ``where``),
    refused when it is not a bnonly file of that kind or comes from a newer bnonly."""
    if not isinstance(obj, dict):
        raise FormatError(f"{where} is not a bnonly {FILES[kind]}: it holds {type(obj).__name__}, not an object")
    number = obj.get("format", obj.get("version", 1) if kind == "analysis" else 1)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise FormatError(f"{where} has format {number!r}, which no bnonly wrote")
    if number > CURRENT[kind]:
        reads = "format 1" if CURRENT[kind] == 1 else f"formats 1 to {CURRENT[kind]}"
        raise FormatError(f"{where} is {FILES[kind]} format {number}, written by a newer bnonly; this one reads "
                          f"{reads}: pip install -U bnonly")
    return number


def stamped(kind: str, obj: dict) -> dict:
    """``obj`` as today's format writes it: with its format number first."""
    return {"format": CURRENT[kind], **{k: v for k, v in obj.items() if k != "format"}}


def config_fields(values: Any, where: str) -> dict:
    """The TrainConfig fields of a config.json of any format (its format key dropped)."""
    found_format("config", values, where)
    return {k: v for k, v in values.items() if k != "format"}


def upgrade_summary(summary: Any, where: str) -> dict:
    """A summary.json of any format in today's structure."""
    number = found_format("summary", summary, where)
    summary = dict(summary)
    if number == 1:
        if "compute" not in summary and ("bf16" in summary or "channels_last" in summary):
            summary["compute"] = {k: summary.pop(k) for k in ("bf16", "channels_last") if k in summary}
        if summary.get("status") == "done":
            summary.setdefault("bn_statistics", dict(PRE_RECORD_BN_STATISTICS))
            summary.setdefault("norm_params", None)  # not recorded before format 2's counts
    if number <= 2 and isinstance(summary.get("compute"), dict):
        summary["compute"] = {**summary["compute"], "fused_norm": False}  # the kernel came with format 3
    return stamped("summary", summary)


def upgrade_metrics_row(row: Any, where: str) -> dict:
    """A metrics.jsonl row of any format in today's structure (format 1 rows differ only by the key)."""
    found_format("metrics", row, where)
    return stamped("metrics", row)


def schema(kind: str) -> dict:
    """The JSON Schema of today's format of ``kind`` (config, summary, metrics (one row), analysis,
    compact (the payload's metadata; tensors are described, not validated))."""
    if kind not in CURRENT:
        raise FormatError(f"no schema for {kind!r}: the files are {', '.join(CURRENT)}")
    return json.loads(resources.files("bnonly").joinpath("schemas", f"{kind}.schema.json").read_text())


def history_markdown() -> str:
    """The table of every file's formats (docs/formats.md holds it; a test keeps the two equal)."""
    rows = ["| file | format | what it holds |", "|---|---|---|"]
    for kind, versions in HISTORY.items():
        for number, text in versions.items():
            current = " (today)" if number == CURRENT[kind] else ""
            rows.append(f"| {FILES[kind]} | {number}{current} | {text} |")
    return "\n".join(rows)
