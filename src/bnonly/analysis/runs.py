"""Analysing run folders: loading a finished run, reading and writing its analysis.json.

Files written before sections existed (format 1 and 2: one flat object with a top-level
``version``) are migrated when read, by :func:`read_analysis`, so ``bnonly report`` reads them as
they are and ``bnonly analyze`` keeps what is still fresh. Format 2 becomes version-1 sections
(the disabled channels recomputed from the stored 6-digit off shares); format 1 lacks the
ReLU-fed split, so its ``disabled`` and ``ablation`` sections get version 0 and are redone by the
next ``bnonly analyze`` (its γ/β section is kept).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import compute, formats
from .. import config as cfgmod
from ..data import DataError, make_batches
from ..models import create_model
from ..rundir import RunDir, atomic_write_json, read_json
from ..training import open_data, resolve_device
from .errors import AnalysisError, WeightsAbsent
from .evaluators import (
    DEFAULT_DEAD_SHARE,
    DEFAULT_DRAWS,
    DEFAULT_THRESHOLDS,
    analysis_options,
    analyze_model,
    stale_sections,
)
from .figures import plot_run, pyplot

ANALYSIS_FILE = "analysis.json"
FORMAT_VERSION = formats.ANALYSIS_FORMAT
_RUN_KEYS = ("run", "model", "train", "seed", "epochs", "bn_affine", "gamma_init", "bn_statistics", "dataset",
             "num_classes", "summary_test_acc")
PRE_RECORD_BN_STATISTICS = formats.PRE_RECORD_BN_STATISTICS


def finished_runs(root: str | Path) -> list[Path]:
    """Run folders at or below ``root`` whose summary.json says "done", sorted by path."""
    root = Path(root)
    return [p.parent for p in sorted(root.rglob("summary.json")) if RunDir(p.parent).is_done()]


@dataclass
class LoadedRun:
    """A finished run, ready to evaluate: its final weights loaded into a plain model. final.pt holds
    the BatchNorm running statistics the run's last evaluation used (recalibrated ones after
    ``recalibrate_bn``, the initial ones after ``bn_stats=frozen``, which a plain BatchNorm in
    evaluation mode normalizes with exactly as the frozen one did), so evaluating it gives the run's
    own test accuracy."""

    run: RunDir
    cfg: cfgmod.TrainConfig
    summary: dict
    model: nn.Module
    init_state: dict | None
    test_batches: object
    dataset: object
    device: torch.device
    bf16: bool


def load_trained(path: str | Path, *, data: str | None = None, device: str = "cpu",
             threads: int | None = None) -> LoadedRun:
    """Load a finished run; ``data`` overrides the dataset path in config.json (moved data)."""
    run = RunDir(path)
    if not run.config.exists():
        raise AnalysisError(f"{run.path} is not a run folder (no config.json)")
    if not run.is_done():
        raise AnalysisError(f"run {run.path} has not finished (no summary.json with status 'done')")
    cfg = cfgmod.from_dict(run.read_config())
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    summary = run.read_summary()
    # Evaluate as the run trained when on the same kind of device; elsewhere as this one does best.
    # (Summaries from before compute settings were recorded hold bf16 and channels_last at the top.)
    trained_on = torch.device(summary.get("device", "cpu")).type
    recorded = summary.get("compute") or {k: summary[k] for k in ("bf16", "channels_last") if k in summary}
    settings, _ = compute.resolve(dict(bf16=cfg.bf16, channels_last=cfg.channels_last),
                                  compute.Capabilities.of(dev.type),
                                  recorded=recorded if trained_on == dev.type else None)
    bf16, channels_last = settings.bf16, settings.channels_last
    try:
        dataset = open_data(cfg, data)
    except DataError as e:
        if data:
            raise
        raise AnalysisError(f"{run.path} trained on data {cfg.data!r}, which cannot be opened from {Path.cwd()}: "
                            f"run from the folder it was trained from, or give --data PATH ({e})") from None
    final = torch.load(run.final_weights, map_location="cpu")
    init = torch.load(run.init_weights, map_location="cpu") if run.init_weights.exists() else None
    model = create_model(cfg.model, cfg.num_classes or dataset.num_classes, gamma_init=cfg.gamma_init, seed=cfg.seed)
    model.load_state_dict(final)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    batches = make_batches(dataset.test, batch_size=max(cfg.batch_size, 500), train=False, augment="none",
                           normalize=cfg.normalize, seed=cfg.seed, device=dev, channels_last=channels_last,
                           num_workers=cfg.num_workers)
    return LoadedRun(run, cfg, summary, model, init, batches, dataset, dev, bf16)


def read_analysis(run_dir: str | Path) -> dict | None:
    """A run folder's analysis.json in today's format (migrated if older), or None if there is none."""
    path = Path(run_dir) / ANALYSIS_FILE
    found = read_json(path)
    if found is not None:
        formats.found_format("analysis", found, str(path))
    return migrate(found)


_AFFINE_LAYER_KEYS = ("name", "type", "num_features", "affine", "gamma", "beta", "init_gamma", "fraction_gamma_below")


def migrate(old: dict | None) -> dict | None:
    """An analysis in today's format: a format-1 or format-2 one (one flat object) as sections;
    one in today's format (or None) as it is."""
    if old is None or "sections" in old:
        return old
    version = 1 if old.get("version", 1) >= 2 else 0
    o = old["options"]
    layers = old["layers"]
    affine = dict(
        version=1, options=dict(thresholds=o["thresholds"]), seconds=None, n_layers=old["n_layers"],
        n_features=old["n_features"], fraction_gamma_below=old["fraction_gamma_below"], overall=old["overall"],
        layers=[{**{k: layer[k] for k in _AFFINE_LAYER_KEYS},
                 "channels": {k: v for k, v in layer["channels"].items() if k != "off_share"}} for layer in layers])
    disabled = dict(
        version=version, options=dict(thresholds=o["thresholds"], dead_share=o["dead_share"]), seconds=None,
        test=old["test"], n_features=old["n_features"], n_dead=old["n_dead"], fraction_dead=old["fraction_dead"],
        dead_relation=old["dead_relation"],
        **{k: old.get(k) for k in ("n_relu_fed_features", "n_dead_relu_fed", "fraction_dead_relu_fed")},
        layers=[dict(name=layer["name"], feeds_relu=layer.get("feeds_relu"), n_dead=layer["n_dead"],
                     fraction_dead=layer["fraction_dead"], channels=dict(off_share=layer["channels"]["off_share"]),
                     dead_channels=[i for i, s in enumerate(layer["channels"]["off_share"]) if s >= o["dead_share"]])
                for layer in layers])
    ablation = dict(old["ablation"], version=version, options=dict(draws=o["draws"], seed=o["seed"]), seconds=None)
    return {**{k: old[k] for k in _RUN_KEYS if k in old}, "format": FORMAT_VERSION,
            "sections": dict(affine=affine, disabled=disabled, ablation=ablation)}


def analyze_run(path: str | Path, *, thresholds=DEFAULT_THRESHOLDS, dead_share: float = DEFAULT_DEAD_SHARE,
                draws: int = DEFAULT_DRAWS, seed: int = 0, data: str | None = None, device: str = "cpu",
                threads: int | None = None, figures: bool = True, force: bool = False) -> dict:
    """Analyse one finished run and write ``analysis.json`` (and figures) into its folder.

    Sections of an existing analysis that are still fresh are kept (all of them unless ``force``);
    when every section is, the file is returned as it is, without loading the run. Figures need
    matplotlib (the report extra): without it, this refuses before measuring anything.
    """
    if figures:
        pyplot()
    run = RunDir(path)
    options = analysis_options(thresholds, dead_share, draws, seed)
    existing = None if force else read_analysis(run.path)
    kept = existing["sections"] if existing else {}
    stale = stale_sections(kept, options)
    if existing and not stale:
        return existing
    if not run.final_weights.exists():
        # A run kept as its small files (a results/ folder, weights left behind): nothing to measure.
        if existing is None:
            raise AnalysisError(f"{run.path} has no final.pt (its trained weights) and no analysis.json: it can be "
                                "analysed only where its weights are (the machine or folder it trained in)")
        warnings.warn(f"{run.path}: kept its analysis.json as it is; section(s) {', '.join(stale)} are out of date "
                      "or missing, and the run's weights (final.pt) are not here to redo them", WeightsAbsent,
                      stacklevel=2)
        return existing
    loaded = load_trained(path, data=data, device=device, threads=threads)
    cfg = loaded.cfg
    sections = analyze_model(loaded.model, loaded.test_batches, init_state=loaded.init_state, **options,
                             bf16=loaded.bf16, device=loaded.device, kept=kept, train=cfg.train)
    result = dict(
        format=FORMAT_VERSION, run=run.path.name, model=cfg.model, train=cfg.train, seed=cfg.seed, epochs=cfg.epochs,
        bn_affine=cfg.bn_affine, gamma_init=cfg.gamma_init,
        bn_statistics=loaded.summary.get("bn_statistics") or PRE_RECORD_BN_STATISTICS, dataset=loaded.dataset.name,
        num_classes=loaded.dataset.num_classes, summary_test_acc=loaded.summary.get("test_acc"), sections=sections,
    )
    atomic_write_json(run.path / ANALYSIS_FILE, result)
    if figures:
        plot_run(result, run.path)
    return result
