"""The run configuration: one typed dataclass, named presets, and the run's identity.

Every field becomes a ``bnonly train`` flag with its help text. Precedence, lowest first:
field defaults (the paper's CIFAR-10 recipe) < ``--preset`` < ``--config FILE`` < flags.

A run's identity is a hash of the fields that differ from their defaults, leaving out
fields that only say *where* or *how fast* to run (``IDENTITY_EXCLUDED``). So a new field
added with a default that changes nothing keeps every old run's hash valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional


class ConfigError(ValueError):
    """A configuration that names an unknown field, preset or value."""


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    # What is trained, and how it starts.
    model: str = _f("cifar_resnet_20", "model name, e.g. cifar_resnet_14, cifar_resnet_56_32, cifar_vgg_16, imagenet_resnet_50")
    train: str = _f("bn", "what trains: terms joined by '+' (all, none, bn, gamma, beta, norm, output, random-per-channel:K, random:matched, random:N)")
    bn_affine: bool = _f(True, "false: BatchNorm γ=1, β=0 fixed (the 'no affine' ablation)")
    gamma_init: str = _f("uniform", "BatchNorm γ init: uniform (U[0,1], the paper) or ones")
    seed: int = _f(0, "seed of the initial weights, data order and augmentation")
    selection_seed: Optional[int] = _f(None, "seed of random what-trains subsets (default: seed)")
    num_classes: Optional[int] = _f(None, "output classes (default: the dataset's)")
    # Data.
    data: str = _f("", "dataset: CIFAR python-batch folder or .tar.gz, image folder with train/ and test/, or synthetic[:k=v,...]")
    augment: str = _f("auto", "train augmentation: cifar (crop pad 4 + flip), imagenet (random-resized crop + flip), none, or auto (cifar for in-memory data, imagenet for streamed folders)")
    image_size: int = _f(224, "crop size for streamed (ImageNet-style) folders; test images are resized to 256/224 of it first")
    normalize: str = _f("imagenet", "input normalization: imagenet (the framework's choice), cifar, none")
    # Optimization.
    epochs: float = _f(160.0, "training epochs; the schedule keeps its shape (milestones scale with epochs)")
    batch_size: int = _f(128, "global batch size (split across ranks when distributed)")
    sync_bn: bool = _f(False, "with several processes, BatchNorm statistics over the global batch (default: each process's batch_size/N images)")
    lr: float = _f(0.1, "peak learning rate")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(1e-4, "weight decay on every trainable tensor")
    milestones: tuple = _f((80, 120), "epochs (of schedule_epochs) where lr is multiplied by lr_gamma")
    lr_gamma: float = _f(0.1, "lr factor at each milestone")
    warmup_epochs: float = _f(0.0, "linear warmup length (of schedule_epochs)")
    schedule_epochs: float = _f(160.0, "the recipe length the milestones and warmup refer to")
    # Evaluation.
    eval_every: float = _f(1.0, "evaluate on the test set every this many epochs (and at the end)")
    # How and where to run: not part of the run's identity.
    device: str = _f("auto", "cpu, cuda, cuda:N or auto")
    channels_last: Optional[bool] = _f(None, "channels_last memory format (default: what measures fastest on the device)")
    bf16: Optional[bool] = _f(None, "bf16 autocast (default: on for CUDA, off for CPU, where it measured slower)")
    compile: bool = _f(False, "torch.compile the model")
    checkpoint_activations: int = _f(0, "activation checkpointing for deep nets: recompute the block stacks in this many segments in the backward (0: off; about sqrt(blocks) saves most)")
    num_workers: int = _f(4, "DataLoader workers for streamed (ImageNet-style) data")
    threads: Optional[int] = _f(None, "CPU threads for torch (default: torch's choice)")
    cache_dir: Optional[str] = _f(None, "where decoded image folders are cached (default $BNONLY_CACHE or ~/.cache/bnonly)")
    progress: bool = _f(True, "show a progress bar")
    out: str = _f("runs", "output root; each run gets its own folder below it")

    def __post_init__(self):
        # One value, one type, whichever way the config was built (Python, flags, YAML), so
        # TrainConfig(epochs=10) and `--epochs 10` name the same run.
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))

    def replace(self, **changes) -> "TrainConfig":
        return from_dict(self.to_dict() | changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @property
    def run_id(self) -> str:
        """Content hash of the fields that define the experiment."""
        identity = {k: v for k, v in self.to_dict().items()
                    if k not in IDENTITY_EXCLUDED and v != _jsonable(FIELD_DEFAULTS[k])}
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def run_name(self) -> str:
        """Readable folder name: model, what trains, seed, then the identity hash."""
        spec = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.train)
        return f"{self.model}.{spec}.s{self.seed}.{self.run_id}"

    @property
    def effective_selection_seed(self) -> int:
        return self.seed if self.selection_seed is None else self.selection_seed


IDENTITY_EXCLUDED = frozenset({"device", "num_workers", "threads", "cache_dir", "progress", "out", "compile",
                               "checkpoint_activations"})
FIELD_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}

PRESETS: dict[str, dict[str, Any]] = {
    # The framework's CIFAR-10 recipe is the field defaults; CIFAR-100 uses the same one.
    "cifar10": {},
    "cifar100": {},
    "imagenet": dict(
        model="imagenet_resnet_50", augment="imagenet", epochs=90, schedule_epochs=90,
        batch_size=1024, lr=0.4, warmup_epochs=5, milestones=(30, 60, 80), eval_every=1,
    ),
}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def _coerce(name: str, value: Any) -> Any:
    """Turn a flag string or config-file value into the field's type."""
    default = FIELD_DEFAULTS[name]
    optional_kind = {"selection_seed": int, "num_classes": int, "channels_last": bool, "bf16": bool,
                     "threads": int, "cache_dir": str}
    kind = optional_kind.get(name, type(default))
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and name in optional_kind):
        if name in optional_kind:
            return None
        raise ConfigError(f"field '{name}' may not be empty")
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            numbers = (float(x) for x in items if str(x).strip() != "")
            return tuple(int(x) if x.is_integer() else x for x in numbers)  # 80 and 80.0: one hash
        if kind is float:
            return float(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"field '{name}' expects {kind.__name__}, got {value!r}") from None


def from_dict(values: dict[str, Any]) -> TrainConfig:
    unknown = sorted(set(values) - set(FIELD_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; valid fields: {', '.join(FIELD_DEFAULTS)}")
    return TrainConfig(**values)


def read_yaml(path: str | Path, what: str, error: type[Exception] = ConfigError) -> Any:
    """The parsed YAML (or JSON) of file ``path`` ({} when empty); a missing file or bad syntax
    raises ``error`` naming it as ``what`` ("config file", "sweep file")."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {p} does not exist")
    try:
        return yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{what} {p} is not valid YAML/JSON: {e}") from None


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON mapping of config fields."""
    values = read_yaml(path, "config file")
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return values


def resolve(preset: str | None = None, config_file: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults < preset < config file < overrides (``None`` overrides are ignored)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    if config_file is not None:
        values.update(load_file(config_file))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(values)


def help_of(name: str) -> str:
    return next(f.metadata["help"] for f in fields(TrainConfig) if f.name == name)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]
