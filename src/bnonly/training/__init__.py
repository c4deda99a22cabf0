"""Training: from a config to a finished run folder.

Modules by job, imported in this order (each only imports those above it):

- ``schedule``: the learning-rate schedule (:func:`lr_at`);
- ``evaluate``: test-set evaluation (:func:`evaluate`);
- ``objectives``, ``optimizers``: the registries ``OBJECTIVES`` (``--loss``) and ``OPTIMIZERS``
  (``--optimizer``);
- ``build``: :func:`preflight`, :func:`open_data` and :func:`build` (checks, data, model, what trains, speed);
- ``step``: :class:`TrainStep`, the one step the loop calls;
- ``callbacks``: evaluation, checkpointing, progress, the finite check, signals, logging;
- ``loop``: :class:`Trainer`, the loop and the resumable state;
- ``counting``: parameter counts; ``run``: :func:`train`, a run's whole life.
"""

from ..compute import resolve_device
from ..errors import EXIT_INTERRUPTED, EXIT_LOCKED, Interrupted, TrainingFailed
from .build import Built, build, open_data, preflight
from .callbacks import LOGGERS, STOP_SIGNALS, Callback
from .counting import count_summary
from .evaluate import evaluate
from .loop import Trainer, default_callbacks
from .objectives import OBJECTIVES
from .optimizers import OPTIMIZERS
from .run import train
from .schedule import lr_at
from .step import StepOutput, TrainStep

__all__ = [
    "EXIT_INTERRUPTED", "EXIT_LOCKED", "LOGGERS", "OBJECTIVES", "OPTIMIZERS", "STOP_SIGNALS", "Built", "Callback",
    "Interrupted", "StepOutput", "TrainStep", "Trainer", "TrainingFailed", "build", "count_summary",
    "default_callbacks", "evaluate", "lr_at", "open_data", "preflight", "resolve_device", "train",
]
