"""A run's folder: config, metrics, summary, weights and checkpoints, all written atomically.

Layout of ``OUT/<run_name>/``::

    config.json      the resolved TrainConfig
    metrics.jsonl    one JSON object per evaluation
    summary.json     written last; its presence with status "done" marks a finished run
    init.pt, final.pt  plain state_dicts (architecture keys, effective weights)
    checkpoint.pt    latest resumable state; checkpoint.prev.pt the one before it
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """No usable checkpoint could be read."""


def atomic_write_bytes(path: Path, write) -> None:
    """Write via a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    init_weights = property(lambda self: self.path / "init.pt")
    final_weights = property(lambda self: self.path / "final.pt")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    previous_checkpoint = property(lambda self: self.path / "checkpoint.prev.pt")

    def read_summary(self) -> dict | None:
        return read_json(self.summary)

    def is_done(self) -> bool:
        s = self.read_summary()
        return bool(s) and s.get("status") == "done"

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.jsonl atomically (used to drop rows newer than a resumed checkpoint)."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        atomic_write_bytes(self.metrics, lambda f: f.write(text.encode()))

    def append_metrics(self, row: dict) -> None:
        self.write_metrics(self.read_metrics() + [row])

    def save_checkpoint(self, state: dict) -> None:
        """Keep the previous checkpoint so a corrupt latest one can fall back to it."""
        if self.checkpoint.exists():
            os.replace(self.checkpoint, self.previous_checkpoint)
        atomic_torch_save(self.checkpoint, state)

    def load_checkpoint(self, map_location="cpu") -> tuple[dict | None, list[str]]:
        """The newest readable checkpoint (or None), and warnings about unreadable ones."""
        warnings = []
        for path in (self.checkpoint, self.previous_checkpoint):
            if not path.exists():
                continue
            try:
                state = torch.load(path, map_location=map_location, weights_only=False)
                if not isinstance(state, dict) or "step" not in state:
                    raise CheckpointError("not a bnonly checkpoint")
                return state, warnings
            except Exception as e:  # noqa: BLE001 - any unreadable file falls back to the older one
                warnings.append(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); trying an older one")
        if warnings:
            raise CheckpointError(
                "every checkpoint in " + str(self.path) + " is unreadable: " + "; ".join(warnings)
                + ". Delete the run folder to start over.")
        return None, warnings
