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
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from . import formats
from .errors import ConfigError
from .trainable import SPEC_HELP


def _f(default, help: str, allowed: Allowed | None = None, **kw):
    """A config field: its default, help text and the values it allows (stated in the help)."""
    if allowed is not None:
        help = f"{help} [{allowed.text}]"
    return field(default=default, metadata={"help": help, "allowed": allowed, **kw})


@dataclass(frozen=True)
class Allowed:
    """The values a field accepts: ``text`` says which (in the help and in every refusal)."""

    text: str
    check: Callable[[Any], bool]
    schema: tuple = ()
    """The same bounds as JSON Schema keywords ((keyword, value) pairs), for config.schema.json."""


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def above(low, high=None) -> Allowed:
    return Allowed(f"> {low}" + (f" and <= {high}" if high is not None else ""),
                   lambda v: _finite(v) and v > low and (high is None or v <= high),
                   (("exclusiveMinimum", low),) + ((("maximum", high),) if high is not None else ()))


def at_least(low, high=None) -> Allowed:
    return Allowed(f">= {low}" + (f" and <= {high}" if high is not None else ""),
                   lambda v: _finite(v) and v >= low and (high is None or v <= high),
                   (("minimum", low),) + ((("maximum", high),) if high is not None else ()))


def one_of(*choices) -> Allowed:
    return Allowed("one of " + ", ".join(map(str, choices)), lambda v: v in choices, (("enum", list(choices)),))


def matching(pattern: str, text: str) -> Allowed:
    return Allowed(text, lambda v: re.fullmatch(pattern, v) is not None, (("pattern", f"^(?:{pattern})$"),))


def _ascending(v) -> bool:
    return all(_finite(x) and x > 0 for x in v) and all(a < b for a, b in zip(v, v[1:]))


NON_EMPTY = Allowed("not empty", lambda v: v.strip() != "", (("pattern", r"\S"),))
SEED = at_least(0, 2**63 - 1)
ASCENDING = Allowed("positive numbers in ascending order (may be empty: no decay)", _ascending,
                    (("items", {"type": "number", "exclusiveMinimum": 0}),))
DEVICE = matching(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class TrainConfig:
    """Every field's type and range are checked on construction, so the Python API, flags, config
    files, sweeps, torchrun and Slurm launches all refuse the same values, with the same one-line
    message, before anything is written."""

    # What is trained, and how it starts.
    model: str = _f(
        "cifar_resnet_20",
        "model name, e.g. cifar_resnet_14, cifar_resnet_56_32, cifar_vgg_16, imagenet_resnet_50", NON_EMPTY)
    train: str = _f("bn", f"what trains: {SPEC_HELP}", NON_EMPTY)
    bn_affine: bool = _f(True, "false: BatchNorm γ=1, β=0 fixed (the 'no affine' ablation)")
    gamma_init: str = _f("uniform", "BatchNorm γ init: uniform (U[0,1], the paper) or ones", one_of("uniform", "ones"))
    seed: int = _f(0, "seed of the initial weights, data order and augmentation", SEED)
    selection_seed: Optional[int] = _f(None, "seed of random what-trains subsets (default: seed)", SEED)
    weight_init: Optional[str] = _f(
        None,
        "distribution of the conv/linear weights (frozen or not): kaiming_normal, kaiming_uniform, orthogonal, "
        "signed_constant (±σ of Kaiming normal), timm_vit; bnonly.models.WEIGHT_INITS lists all (default: the "
        "family's own, kaiming_normal as the paper for CNNs and MLPs)", NON_EMPTY)
    init_from: str = _f(
        "",
        "start from this finished run's final weights (a run folder); the output layer is re-initialized when the "
        "class count differs; the source run's id is part of this run's identity")
    num_classes: Optional[int] = _f(
        None,
        "output classes (default: the dataset's); at least the dataset's", at_least(2))
    classes: str = _f(
        "",
        "train and test on these classes only: comma-separated class names or indices, relabelled 0..k-1 in the "
        "order given (default: all)")
    # Data.
    data: str = _f(
        "",
        "dataset: CIFAR python-batch folder or .tar.gz, image folder with train/ and test/, or synthetic[:k=v,...]")
    augment: str = _f(
        "auto",
        "train augmentation: cifar (crop pad 4 + flip), imagenet (random-resized crop + flip), none, or auto (cifar "
        "for in-memory data, imagenet for streamed folders)", one_of("auto", "cifar", "imagenet", "none"))
    image_size: int = _f(
        224,
        "crop size for streamed (ImageNet-style) folders; test images are resized to 256/224 of it first",
        at_least(8, 4096))
    normalize: str = _f(
        "imagenet",
        "input normalization: imagenet (the framework's choice), cifar, none", one_of("imagenet", "cifar", "none"))
    # Optimization.
    epochs: float = _f(
        160.0,
        "training epochs; the schedule keeps its shape (milestones scale with epochs)", above(0, 100_000))
    batch_size: int = _f(
        128,
        "global batch size (split across ranks when distributed); at most the training set", at_least(1))
    sync_bn: bool = _f(
        False,
        "with several processes, BatchNorm statistics over the global batch (default: each process's batch_size/N "
        "images)")
    optimizer: str = _f("sgd", "optimizer: sgd (the paper's) or adamw; bnonly.training.OPTIMIZERS lists all", NON_EMPTY)
    loss: str = _f("cross_entropy", "training objective; bnonly.training.OBJECTIVES lists all", NON_EMPTY)
    lr: float = _f(0.1, "peak learning rate", at_least(0))
    momentum: float = _f(
        0.9,
        "SGD momentum (not used by adamw)", Allowed(">= 0 and < 1", lambda v: _finite(v) and 0 <= v < 1))
    weight_decay: float = _f(1e-4, "weight decay on every trainable tensor", at_least(0))
    norm_weight_decay: Optional[float] = _f(
        None,
        "weight decay on normalization γ/β instead (default: weight_decay, as the paper)", at_least(0))
    norm_lr_scale: float = _f(1.0, "learning-rate multiplier for normalization γ/β", above(0))
    milestones: tuple = _f(
        (80, 120),
        "epochs (of schedule_epochs) where lr is multiplied by lr_gamma; each <= schedule_epochs", ASCENDING)
    lr_gamma: float = _f(0.1, "lr factor at each milestone", above(0, 1))
    warmup_epochs: float = _f(0.0, "linear warmup length (of schedule_epochs); at most schedule_epochs", at_least(0))
    schedule_epochs: float = _f(160.0, "the recipe length the milestones and warmup refer to", above(0, 100_000))
    bn_stats: str = _f(
        "batch",
        "BatchNorm statistics in training: batch (normalize with each batch's, the usual), or frozen (normalize "
        "with the running statistics, fixed at their initial values: the affine stays, the normalization goes)",
        one_of("batch", "frozen"))
    # Evaluation.
    eval_every: float = _f(
        1.0,
        "evaluate on the test set every this many epochs, and at the end; 0: only at the end", at_least(0))
    recalibrate_bn: int = _f(
        0,
        "before each evaluation, recompute BatchNorm running statistics over this many training batches "
        "(PreciseBN); 0: the running averages", at_least(0, 10_000))
    # How and where to run: not part of the run's identity (bnonly.compute records and keeps them).
    device: str = _f("auto", "cpu, cuda, cuda:N or auto", DEVICE)
    channels_last: Optional[bool] = _f(
        None,
        "channels_last memory format (default: what measures fastest on the device; a resumed run keeps its own)")
    bf16: Optional[bool] = _f(
        None,
        "bf16 autocast (default: on for CUDA and CPUs with native bf16, off on AVX2-only CPUs; $BNONLY_CPU_BF16=1/0 "
        "replaces the CPU default; a resumed run keeps its own)")
    compile: Optional[bool] = _f(None, "torch.compile the model (default: off; a resumed run keeps its own)")
    capture: Optional[bool] = _f(
        None,
        "the whole training step (batch gather, forward, backward, SGD) in one CUDA graph; on the CPU the same step "
        "runs eagerly (default: off; a resumed run keeps its own)")
    fused_norm: Optional[bool] = _f(
        None,
        "BatchNorm + residual add + ReLU in one C++ kernel on the CPU in training (default: on where the kernel "
        "builds and the model is not compiled; a resumed run keeps its own)")
    checkpoint_activations: int = _f(
        0,
        "activation checkpointing for deep nets: recompute the block stacks in this many segments in the backward "
        "(0: off; about sqrt(blocks) saves most)", at_least(0, 10_000))
    num_workers: int = _f(4, "DataLoader workers for streamed (ImageNet-style) data", at_least(0, 1024))
    threads: Optional[int] = _f(
        None,
        "CPU threads for torch (default: torch's choice; a resumed run keeps its own)", at_least(1, 4096))
    cache_dir: Optional[str] = _f(
        None,
        "where decoded image folders are cached (default $BNONLY_CACHE or ~/.cache/bnonly)")
    progress: bool = _f(True, "show a progress bar")
    log: str = _f("", "extra logging beside metrics.jsonl, comma-separated: tensorboard")
    out: str = _f("runs", "output root; each run gets its own folder below it", NON_EMPTY)

    def __post_init__(self):
        # One value, one type, whichever way the config was built (Python, flags, YAML), so
        # TrainConfig(epochs=10) and `--epochs 10` name the same run.
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        # "cat, dog" and "cat,dog" pick the same classes: one spelling, one run folder
        classes = ",".join(c.strip() for c in self.classes.split(",")) if self.classes else ""
        object.__setattr__(self, "classes", classes)
        _check_ranges(self)

    def replace(self, **changes) -> TrainConfig:
        return from_dict(self.to_dict() | changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @property
    def run_id(self) -> str:
        """Content hash of the fields that define the experiment."""
        identity = {k: v for k, v in self.to_dict().items()
                    if k not in IDENTITY_EXCLUDED and v != _jsonable(FIELD_DEFAULTS[k])}
        if self.init_from:  # the source run, not where it lies, is what this run starts from
            identity["init_from"] = source_run_id(self.init_from)
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
                               "checkpoint_activations", "bf16", "channels_last", "capture", "fused_norm",
                               "log"})
"""Fields that say where or how fast a run goes, not what it is: left out of the run's hash.
The compute settings among them (bf16, channels_last, compile, capture, threads, fused_norm) are recorded with the
run instead, and a resumed run keeps them (bnonly.compute)."""
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


def source_run_id(run_dir: str) -> str:
    """The run id of the run folder ``run_dir`` (from its summary.json, else its config.json)."""
    folder = Path(run_dir).expanduser()
    for name in ("summary.json", "config.json"):
        try:
            data = json.loads((folder / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if name == "summary.json" and data.get("run_id"):
            return data["run_id"]
        if name == "config.json":
            return from_dict(formats.config_fields(data, str(folder / name))).run_id
    raise ConfigError(f"init_from={run_dir!r} is not a run folder (no readable summary.json or config.json there)")


def _field_kinds() -> dict[str, tuple[type, bool]]:
    """Field name -> (type, whether None is allowed), read from the type hints."""
    kinds = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = typing.get_origin(hint) is typing.Union
        kinds[name] = (args[0] if optional else hint, optional)
    return kinds


FIELD_KINDS = _field_kinds()
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _coerce(name: str, value: Any) -> Any:
    """Turn a flag string or config-file value into the field's type (or refuse it)."""
    kind, optional = FIELD_KINDS[name]
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{name} may not be empty (it expects {_kind_name(kind)})")
    try:
        if kind is bool:
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if isinstance(value, bool):  # True is an int to Python, never a number of epochs
            raise ValueError(value)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            numbers = [_number(x) for x in items if str(x).strip() != ""]
            return tuple(int(x) if x.is_integer() else x for x in numbers)  # 80 and 80.0: one hash
        if kind is float:
            return _number(value)
        if kind is int:
            if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("+-").isdigit()):
                return int(value)  # exact, even past float precision
            number = _number(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        if not isinstance(value, str):
            raise ValueError(value)
        return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name}={value!r} is not {_kind_name(kind)}") from None


def _number(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        raise ValueError(x)
    return float(x)


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            tuple: "a comma-separated list of numbers"}[kind]


def _check_ranges(cfg: TrainConfig) -> None:
    """Each field within its ``allowed`` values, then the rules that tie fields together."""
    for f in fields(cfg):
        allowed, value = f.metadata.get("allowed"), getattr(cfg, f.name)
        if allowed is not None and value is not None and not allowed.check(value):
            raise ConfigError(f"{f.name}={_show(value)} is out of range: allowed {allowed.text}")
    late = [m for m in cfg.milestones if m > cfg.schedule_epochs]
    if late:
        raise ConfigError(f"milestones={_show(cfg.milestones)} has {_show(tuple(late))} beyond schedule_epochs="
                          f"{cfg.schedule_epochs:g}, where they never apply: give milestones in schedule_epochs units")
    if cfg.warmup_epochs > cfg.schedule_epochs:
        raise ConfigError(f"warmup_epochs={cfg.warmup_epochs:g} is longer than schedule_epochs={cfg.schedule_epochs:g}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{x:g}" for x in value) or "(empty)"
    return f"{value:g}" if isinstance(value, float) else repr(value) if isinstance(value, str) else str(value)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from field values; a run's config.json content (with its format key) is accepted as it is."""
    if "format" in values:
        values = formats.config_fields(values, "config")
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
    """Read a YAML or JSON mapping of config fields; a run's config.json (any format) reads as its fields."""
    values = read_yaml(path, "config file")
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field: value")
    return formats.config_fields(values, str(path)) if "format" in values else values


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "array"}


def json_schema() -> dict:
    """The JSON Schema of config.json in today's format, from the fields' types, bounds and help
    (shipped as bnonly/schemas/config.schema.json; a test keeps the two equal)."""
    properties = {"format": {"const": formats.CONFIG_FORMAT, "description": "config.json's format number"}}
    for f in fields(TrainConfig):
        kind, optional = FIELD_KINDS[f.name]
        allowed = f.metadata.get("allowed")
        prop = {"type": [_JSON_TYPES[kind], "null"] if optional else _JSON_TYPES[kind],
                "description": f.metadata["help"], "default": _jsonable(f.default)}
        prop.update(dict(allowed.schema) if allowed is not None else {})
        if kind is tuple:
            prop.setdefault("items", {"type": "number"})
        properties[f.name] = prop
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "bnonly/config.schema.json",
            "title": f"bnonly config.json, format {formats.CONFIG_FORMAT}",
            "description": "A run's resolved TrainConfig: every field, its value, and the format number.",
            "type": "object", "required": ["format", *field_names()], "additionalProperties": False,
            "properties": properties}


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
