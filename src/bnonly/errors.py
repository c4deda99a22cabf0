"""bnonly's errors and process exit codes, in one place every module may import (it imports nothing).

Every error a user can cause derives from :class:`BnonlyError`; the command line catches only
that base, prints its message as one line and exits with its ``exit_code``. Anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
"""A run failed while training (e.g. a non-finite loss); the reason is in its summary.json."""
EXIT_USAGE = 2
"""Bad input: a config field, a spec, a model name, data, an output folder. Nothing was written."""
EXIT_LOCKED = 73
"""Another process is training the same run right now (it holds the run's lock)."""
EXIT_INTERRUPTED = 75
"""Stopped by SIGINT/SIGTERM/SIGUSR2 after saving a checkpoint: launch again to resume."""


class BnonlyError(Exception):
    """Base of every error caused by input or circumstances, not by a bug in bnonly."""

    exit_code = EXIT_USAGE


class ConfigError(BnonlyError, ValueError):
    """A configuration that names an unknown field, preset or value, or a value out of range."""


class OutputError(BnonlyError, OSError):
    """The output folder cannot be created or written; what was written before is intact."""


class RunLocked(BnonlyError, RuntimeError):
    """Another process holds the run's lock: it is training this run right now."""

    exit_code = EXIT_LOCKED


class CheckpointError(BnonlyError, RuntimeError):
    """No usable checkpoint could be read."""


class TrainingFailed(BnonlyError, RuntimeError):
    """The run cannot go on (e.g. a NaN loss); the reason is in summary.json."""

    exit_code = EXIT_FAILED


class Interrupted(BnonlyError):
    """Training stopped by a signal after saving a checkpoint; ``signal_name`` says which."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, signal_name: str | None = None):
        super().__init__(message)
        self.signal_name = signal_name


class MissingExtra(BnonlyError, ImportError):
    """An optional package a command needs is not installed; the message names the extra to install."""


class FormatError(BnonlyError, ValueError):
    """A run file bnonly cannot read: written by a newer bnonly, or not a bnonly file at all."""
