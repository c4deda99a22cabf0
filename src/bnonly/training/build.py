"""From a config to a runnable experiment: checks first, then data, model, what trains, speed.

:func:`preflight` holds the checks that need neither the data's content nor a run folder (a sweep
runs it on every run before training any); :func:`build` opens the data, checks the config
against it, and builds everything a run is made of. Neither writes anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import compute, distributed, speed
from ..config import TrainConfig
from ..data import detect_format, make_batches, open_dataset
from ..errors import ConfigError
from ..extras import require
from ..layers import BATCHNORM_TYPES, layers_of, output_layer
from ..models import WEIGHT_INITS, create_model
from ..rundir import RunDir
from ..trainable import configure, parse_spec
from .callbacks import LOGGERS
from .graph_step import check_capturable
from .objectives import OBJECTIVES
from .optimizers import OPTIMIZERS

NO_DATA = "no dataset given: pass --data PATH (a CIFAR folder/archive, an image folder, or 'synthetic')"


def preflight(cfg: TrainConfig, *, check_device: bool = True) -> None:
    """The model name, the what-trains spec, the optimizer and loss names, the device, and that
    a registered data format recognizes the data path. ``check_device=False`` where the device is
    elsewhere (a Slurm node)."""
    if check_device:
        compute.resolve_device(cfg.device)
    create_model(cfg.model, cfg.num_classes, gamma_init=cfg.gamma_init, seed=None, device="meta")
    parse_spec(cfg.train)
    if cfg.init_from:
        source_run(cfg.init_from)
    if cfg.weight_init:
        WEIGHT_INITS.entry(cfg.weight_init)
    OPTIMIZERS.entry(cfg.optimizer)
    OBJECTIVES.entry(cfg.loss)
    for name in filter(None, (n.strip() for n in cfg.log.split(","))):
        needs = LOGGERS.entry(name).extra.get("requires")
        if needs:
            require(needs, f"--log {name}")
    if not cfg.data:
        raise ConfigError(NO_DATA)
    detect_format(cfg.data)


@dataclass
class Built:
    """Everything a run is made of, built from its config (the public API uses this too)."""

    model: nn.Module
    selection: object
    train_batches: object
    test_batches: object
    num_classes: int
    device: torch.device
    compute: compute.ComputeSettings
    compute_note: str | None = None
    """Set when a resumed run keeps recorded compute settings: the one line that says so."""

    @property
    def bf16(self) -> bool:
        return self.compute.bf16

    @property
    def channels_last(self) -> bool:
        return self.compute.channels_last


def open_data(cfg: TrainConfig, path: str | None = None):
    """The dataset as a run of ``cfg`` sees it: its crop size and class subset (``path``: moved data).

    Everything that reopens a run's data (training, analysis, bench) goes through here, so that a
    run trained on five classes is evaluated on the same five, with a five-way output layer.
    """
    return open_dataset(path or cfg.data, cache_dir=cfg.cache_dir, crop_size=cfg.image_size, classes=cfg.classes)


def build(cfg: TrainConfig, *, recorded_compute: dict | None = None, default_threads: int | None = None) -> Built:
    """Open the data, check the config against it, and build the model and batch sources.

    ``recorded_compute``: the compute settings a resumed run started with (they win over this
    machine's defaults). ``default_threads``: threads to use when neither the config nor the
    record says (a sweep's share of the cores).
    """
    preflight(cfg)  # the cheap checks first: a bad model name is reported before the data is read
    device = compute.resolve_device(cfg.device)
    dataset = open_data(cfg)
    num_classes = _check_against_data(cfg, dataset)
    model, selection = build_model(cfg, num_classes)
    _check_image_fits(model, cfg.model, dataset.train)
    if cfg.sync_bn and distributed.world().distributed and device.type == "cpu":
        other = sorted({type(m).__name__ for _, m in layers_of(model, BATCHNORM_TYPES)
                        if type(m) is not nn.BatchNorm2d})
        if other:
            raise ConfigError(f"--sync-bn on the CPU synchronizes BatchNorm2d only, and {cfg.model} has "
                              f"{', '.join(other)}: "
                              "leave --sync-bn out (per-process statistics) or train on GPUs")
    settings, note = compute.resolve(
        dict(bf16=cfg.bf16, channels_last=cfg.channels_last, compile=cfg.compile, capture=cfg.capture,
             threads=cfg.threads, fused_norm=cfg.fused_norm),
        compute.Capabilities.of(device.type), recorded=recorded_compute, default_threads=default_threads,
        nchw_only=compute.nchw_only_reason(model, device, cfg.model))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model.to(device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    speed.prepare(model, device=device, bf16=settings.bf16, compile=settings.compile, capture=settings.capture,
                  checkpoint_segments=cfg.checkpoint_activations, fused_norm=settings.fused_norm)
    me = distributed.world()
    common = dict(seed=cfg.seed, device=device, normalize=cfg.normalize, channels_last=settings.channels_last,
                  num_workers=cfg.num_workers, rank=me.rank, world_size=me.world_size)
    train_batches = make_batches(dataset.train, batch_size=cfg.batch_size, train=True, augment=cfg.augment, **common)
    if settings.capture:
        check_capturable(train_batches, cfg.optimizer)
    test_batch = max(cfg.batch_size, 500)
    test_batch += -test_batch % me.world_size  # a global batch every rank takes an equal slice of
    test_batches = make_batches(dataset.test, batch_size=test_batch, train=False, augment="none", **common)
    return Built(model, selection, train_batches, test_batches, num_classes, device, settings, note)


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[nn.Module, object]:
    """The run's model on the CPU as training starts it, and what trains in it: created and
    initialized from the seed (``weight_init``), started from ``init_from``, configured (``train``,
    ``bn_affine``), BatchNorm statistics frozen when asked. The one recipe: ``bnonly.compact``
    rebuilds runs with it too."""
    model = create_model(cfg.model, num_classes, gamma_init=cfg.gamma_init, seed=cfg.seed, weight_init=cfg.weight_init)
    if cfg.init_from:
        start_from(model, cfg.init_from)
    selection = configure(model, cfg.train, cfg.effective_selection_seed, bn_affine=cfg.bn_affine)
    if cfg.bn_stats == "frozen":
        freeze_bn_statistics(model)
    return model, selection


def source_run(path: str) -> RunDir:
    """The finished run ``init_from`` names; refused unless it finished and kept its weights."""
    run = RunDir(path)
    if not run.config.exists():
        raise ConfigError(f"init_from={path!r} is not a run folder (no config.json there)")
    if not run.is_done():
        raise ConfigError(f"init_from={path!r} has not finished (no summary.json with status 'done'): "
                          f"finish it first, or start from another run")
    if not run.final_weights.exists():
        raise ConfigError(f"init_from={path!r} finished but has no final.pt to start from")
    return run


def start_from(model: nn.Module, path: str) -> None:
    """Load the source run's final weights into ``model`` (built and initialized from this run's
    seed). The output layer keeps its fresh initialization when its shape differs (another class
    count); any other difference in architecture is an error."""
    run = source_run(path)
    source = run.read_config() or {}
    state = torch.load(run.final_weights, map_location="cpu")
    own = model.state_dict()
    out_name, _ = output_layer(model)
    fresh = {k for k in own if k.startswith(out_name + ".") and k in state and state[k].shape != own[k].shape}
    wrong = sorted(k for k in own if k not in fresh and (k not in state or state[k].shape != own[k].shape))
    if wrong or set(state) - set(own):
        raise ConfigError(f"init_from={path!r} trained {source.get('model')!r}, whose weights do not fit this model "
                          f"(first mismatch: {(wrong or sorted(set(state) - set(own)))[0]}); use the same model name")
    model.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)


def freeze_bn_statistics(model: nn.Module) -> int:
    """``bn_stats="frozen"``: every BatchNorm normalizes with its running statistics, fixed at their
    initial values (mean 0, variance 1), in training as in evaluation, and never updates them. What
    remains is the affine y = γ·x/sqrt(1+ε) + β: the normalization is gone, γ and β stay. The
    module's class is swapped for a subclass, so parameters, buffers and state-dict keys stay."""
    changed = 0
    for _, module in layers_of(model, BATCHNORM_TYPES):
        if not isinstance(module, FrozenStatistics):
            module.__class__ = _frozen_class(type(module))
            changed += 1
    return changed


class FrozenStatistics:
    """Mixin: BatchNorm's evaluation-mode arithmetic in every mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


_FROZEN: dict[type, type] = {}


def _frozen_class(cls: type) -> type:
    if cls not in _FROZEN:
        _FROZEN[cls] = type(f"FrozenStats{cls.__name__}", (FrozenStatistics, cls), {})
    return _FROZEN[cls]


def _check_against_data(cfg: TrainConfig, dataset) -> int:
    """The checks that need the data; returns the number of output classes."""
    if cfg.num_classes is not None and cfg.num_classes < dataset.num_classes:
        raise ConfigError(f"num_classes={cfg.num_classes} is below the {dataset.num_classes} classes of {cfg.data} "
                          f"(labels 0-{dataset.num_classes - 1}): leave --num-classes out or give at least "
                          f"{dataset.num_classes}")
    if cfg.batch_size > len(dataset.train):
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(dataset.train)} training images of "
                          f"{cfg.data}: an epoch would have no full batch; give at most {len(dataset.train)}")
    return cfg.num_classes or dataset.num_classes


def _check_image_fits(model: nn.Module, name: str, split) -> None:
    """One image through the model (eval mode, no gradients, nothing changes): an image too
    small for the model's downsampling fails here, before anything is written."""
    height, width = split.image_size
    channels = split.images.shape[1] if hasattr(split, "images") else 3
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, height, width))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{height}x{width} images do not fit {name} ({first}); use the image size it takes "
                          f"(--image-size for streamed folders), or for a CNN one with less downsampling") from None
    finally:
        model.train(was_training)
