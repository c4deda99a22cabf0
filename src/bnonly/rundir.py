"""A run's folder: config, metrics, summary, weights and checkpoints, all written atomically.

Layout of ``OUT/<run_name>/``::

    config.json      the resolved TrainConfig
    metrics.jsonl    one JSON object per evaluation
    summary.json     written last; its presence with status "done" marks a finished run
    init.pt, final.pt  plain state_dicts (architecture keys, effective weights)
    scores.pt        a supermask run's final scores (weight name -> scores): final.pt holds only the
                     masked weights they chose, and ``bnonly export --compact`` stores the scores
    checkpoint.pt    latest resumable state; checkpoint.prev.pt the one before it. Each starts with
                     a SHA-256 of its content, so a damaged file is detected (torch.load alone
                     silently loads flipped bytes), reported, renamed *.corrupt, and the older one used
    lock             flock-ed by the process training the run (holder's host and pid inside)
    train.log        output of the run's launches by ``bnonly sweep``
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from . import formats
from .errors import CheckpointError, OutputError, RunLocked

CHECKPOINT_MAGIC = b"bnonly-checkpoint sha256="


def atomic_write_bytes(path: Path, write, before_replace=None) -> None:
    """Write via a temp file in the same folder, fsync, then rename over ``path``.

    ``before_replace()`` runs once the new content is safely on disk, just before the rename
    (a checkpoint rotates its predecessor there). A failed write leaves ``path`` as it was and
    raises :class:`OutputError` naming the file and the cause.
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"could not write {path}: {e.strerror or e}; files written before are intact") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def check_writable(path: Path, what: str) -> None:
    """Refuse, before anything is written, a ``path`` that could not be created as a folder and
    written: part of it is a regular file, or its nearest existing folder is not writable."""
    path = Path(path).absolute()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{what} cannot hold {path}: {parent} is a file, not a folder; choose another {what}")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{what} cannot hold {path}: {parent} is not writable by this user; "
                                  f"choose another {what}")
            return


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def atomic_torch_save(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    init_weights = property(lambda self: self.path / "init.pt")
    final_weights = property(lambda self: self.path / "final.pt")
    scores = property(lambda self: self.path / "scores.pt")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    previous_checkpoint = property(lambda self: self.path / "checkpoint.prev.pt")
    lock_file = property(lambda self: self.path / "lock")
    log = property(lambda self: self.path / "train.log")

    def read_summary(self) -> dict | None:
        """summary.json in today's format (older ones upgraded; bnonly.formats), None if absent."""
        summary = read_json(self.summary)
        return None if summary is None else formats.upgrade_summary(summary, str(self.summary))

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.summary, formats.stamped("summary", summary))

    def read_config(self) -> dict | None:
        """config.json's TrainConfig fields (any format), None if absent or unreadable."""
        values = read_json(self.config)
        return None if values is None else formats.config_fields(values, str(self.config))

    def write_config(self, values: dict) -> None:
        atomic_write_json(self.config, formats.stamped("config", values))

    def is_done(self) -> bool:
        s = self.read_summary()
        return bool(s) and s.get("status") == "done"

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        where = str(self.metrics)
        return [formats.upgrade_metrics_row(json.loads(line), where)
                for line in self.metrics.read_text().splitlines() if line.strip()]

    def write_metrics(self, rows: list[dict]) -> None:
        """Rewrite metrics.jsonl atomically (used to drop rows newer than a resumed checkpoint)."""
        text = "".join(json.dumps(formats.stamped("metrics", r), sort_keys=True) + "\n" for r in rows)
        atomic_write_bytes(self.metrics, lambda f: f.write(text.encode()))

    def append_metrics(self, row: dict) -> None:
        self.write_metrics(self.read_metrics() + [row])

    def save_checkpoint(self, state: dict) -> None:
        """Keep the previous checkpoint so a corrupt latest one can fall back to it.

        A kill or a failed write at any moment leaves a usable file: the new one is written
        completely first, then the old latest is renamed to .prev and the new one renamed in.
        """
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getbuffer()
        header = CHECKPOINT_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n"

        def rotate():
            if self.checkpoint.exists():
                os.replace(self.checkpoint, self.previous_checkpoint)

        atomic_write_bytes(self.checkpoint, lambda f: (f.write(header), f.write(data)), before_replace=rotate)

    def load_checkpoint(self, map_location="cpu", quarantine: bool = False) -> tuple[dict | None, list[str]]:
        """The newest readable checkpoint (or None), and messages about the unreadable ones skipped.

        With ``quarantine`` (the process that writes the run), a skipped file is renamed
        ``*.corrupt`` once an older one loaded, so the next save cannot rotate it into
        checkpoint.prev.pt over the good one. If none loads, nothing is renamed and CheckpointError
        says so: the run never silently starts over.
        """
        warnings, unreadable = [], []
        for path in (self.checkpoint, self.previous_checkpoint):
            if not path.exists():
                continue
            try:
                state = _read_checkpoint(path, map_location)
            except Exception as e:  # noqa: BLE001 - any unreadable file falls back to the older one
                warnings.append(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})")
                unreadable.append(path)
                continue
            for bad in unreadable if quarantine else ():
                os.replace(bad, bad.with_name(bad.name + ".corrupt"))
            if path == self.previous_checkpoint:
                if not warnings:  # the rotation happened, the new file never appeared
                    warnings.append(f"{self.checkpoint.name} is missing (a launch was killed while writing it)")
                warnings.append(f"resuming from the older checkpoint {path.name} (step {state['step']})")
            return state, warnings
        if warnings:
            raise CheckpointError(
                "every checkpoint in " + str(self.path) + " is unreadable: " + "; ".join(warnings)
                + ". Delete the run folder to start over.")
        return None, warnings

    def recorded_compute(self) -> dict | None:
        """The compute settings the newest readable checkpoint recorded (None: a new run, or a
        checkpoint from before they were recorded)."""
        try:
            state, _ = self.load_checkpoint()
        except CheckpointError:
            return None  # reported when the run loads its checkpoint for real
        return None if state is None else state.get("compute")

    @contextmanager
    def lock(self):
        """Hold the run's lock while training it, so two launches (two sweeps over one folder, a
        sweep and a ``bnonly train``) never train one run at once. flock: the OS releases it
        when the holder dies, so a crash never leaves a stale lock. Raises RunLocked if held."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot create the run folder {self.path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunLocked(f"run {self.path} is being trained by another process ({holder or 'unknown'})") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"host {socket.gethostname()} pid {os.getpid()}\n".encode(), 0)
            for stale in self.path.glob(".*.tmp"):  # left by a process killed mid-write; nobody else writes now
                stale.unlink(missing_ok=True)
            yield
        finally:
            os.close(fd)

    def is_locked(self) -> bool:
        """Whether some process is training this run right now."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)


def _read_checkpoint(path: Path, map_location) -> dict:
    data = path.read_bytes()
    if data.startswith(CHECKPOINT_MAGIC):
        header, _, data = data.partition(b"\n")
        if hashlib.sha256(data).hexdigest().encode() != header[len(CHECKPOINT_MAGIC):]:
            raise CheckpointError("SHA-256 mismatch: the file was damaged after it was written")
    # Files without the header come from before checksums; torch.load still catches truncation.
    state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError("not a bnonly checkpoint")
    return state
