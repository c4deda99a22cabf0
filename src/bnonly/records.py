"""``bnonly.load_run``: a run's files, whatever bnonly version wrote them, as one structure.

A run folder holds config.json, summary.json, metrics.jsonl and, once analysed, analysis.json;
a compact file holds the config and the summary. Each has had more than one format
(``bnonly.formats`` lists them); :func:`load_run` reads any of them and returns a
:class:`RunRecord` in today's format, so a script that reads ``record.analysis["sections"]`` works
on a run analysed by bnonly 0.1 as well as on one from today. It reads files only: no weights
are loaded and no model is built (``bnonly.load_compact`` rebuilds a compact run's model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import config as cfgmod
from . import formats
from .analysis.runs import ANALYSIS_FILE, migrate
from .compact import read_compact
from .errors import FormatError
from .rundir import RunDir, read_json


@dataclass(frozen=True)
class RunRecord:
    """One run's files in today's format.

    - ``config``: the run's :class:`~bnonly.TrainConfig` (fields absent from an older config.json
      take their defaults, which change nothing: the run id is the one it was trained under);
    - ``summary``: summary.json (format 2 keys; ``status`` is "done" or "failed");
    - ``metrics``: metrics.jsonl's rows, one per evaluation, oldest first (empty for a compact file
      or an imported run);
    - ``analysis``: analysis.json as format 3 sections, or None if the run was never analysed;
    - ``formats``: the format number each file had on disk (``{"config": 1, ...}``), so a script
      can tell an upgraded file from a native one;
    - ``path``: the run folder or compact file read.
    """

    path: Path
    config: cfgmod.TrainConfig
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    analysis: dict | None = None
    formats: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.summary.get("status") == "done"

    @property
    def test_acc(self) -> float | None:
        """The final test accuracy (None for a failed run)."""
        return self.summary.get("test_acc")


def load_run(path: str | Path) -> RunRecord:
    """Read the run folder or compact file at ``path`` (any format bnonly has written) into a
    :class:`RunRecord` in today's format. Raises FormatError for a path that holds no run, or a
    file written by a newer bnonly."""
    path = Path(path)
    if path.is_file():
        return _from_compact(path)
    run = RunDir(path)
    raw_config, raw_summary = read_json(run.config), read_json(run.summary)
    if raw_config is None:
        raise FormatError(f"{path} is not a run folder (no readable config.json) nor a compact file")
    if raw_summary is None:
        raise FormatError(f"{path} has no readable summary.json: the run has not finished (launch it again) "
                          f"or was never started")
    found = {"config": formats.found_format("config", raw_config, str(run.config)),
             "summary": formats.found_format("summary", raw_summary, str(run.summary))}
    metrics = []
    if run.metrics.exists():  # each file read and parsed once; a resumed run's rows may mix formats: the oldest
        where = str(run.metrics)
        rows = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
        found["metrics"] = min((formats.found_format("metrics", row, where) for row in rows),
                               default=formats.CURRENT["metrics"])
        metrics = [formats.upgrade_metrics_row(row, where) for row in rows]
    analysis_path = run.path / ANALYSIS_FILE
    analysis = read_json(analysis_path)
    if analysis is not None:
        found["analysis"] = formats.found_format("analysis", analysis, str(analysis_path))
    return RunRecord(path=path, config=_config(formats.config_fields(raw_config, str(run.config)), run.config),
                     summary=formats.upgrade_summary(raw_summary, str(run.summary)), metrics=metrics,
                     analysis=migrate(analysis), formats=found)


def _from_compact(path: Path) -> RunRecord:
    payload = read_compact(path)
    fields = formats.config_fields(payload["config"], str(path))
    summary = payload.get("summary") or {}
    return RunRecord(path=path, config=_config(fields, path),
                     summary=formats.upgrade_summary(summary, str(path)),
                     formats={"compact": payload["format"], "config": formats.found_format("config", payload["config"],
                                                                                           str(path)),
                              "summary": formats.found_format("summary", summary, str(path))})


def _config(fields: dict, where) -> cfgmod.TrainConfig:
    unknown = sorted(set(fields) - set(cfgmod.field_names()))
    if unknown:
        raise FormatError(f"{where} has config field(s) {', '.join(unknown)} this bnonly does not know: it was "
                          f"written by a newer bnonly (pip install -U bnonly)")
    return cfgmod.from_dict(fields)

