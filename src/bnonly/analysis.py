"""What BatchNorm learned in one finished run: γ/β statistics, disabled features, ablation.

``bnonly analyze RUN_DIR`` writes ``analysis.json`` and ``analysis_*.png`` into the run folder.
Definitions (the README's analysis section documents the JSON):

* BN layers are found by module type (every ``_BatchNorm``), so any model works. A layer
  without affine parameters counts as γ = 1, β = 0.
* A *feature* is one channel of one BN layer.
* Small γ: ``|γ| < t`` for each threshold ``t`` (default 0.01, 0.05, 0.1).
* *Off share* of a feature: the share of test inputs for which ``ReLU(BN(x))`` of that channel
  is zero at every spatial position, i.e. the BN output is ``<= 0`` everywhere. The ReLU is
  applied to the BN's own output, whatever the model does next. For a BN that feeds a ReLU
  directly (the CIFAR ResNet stem BN and every block's first BN, every VGG BN) that is exactly
  the post-ReLU feature. For a BN that feeds a residual sum first (a block's second BN and its
  shortcut BN) it means "this channel never adds anything positive to the sum".
* *Disabled* (or dead): off share ``>= dead_share`` (default 0.99).
* *ReLU-fed* BN: one whose output is used only by ReLUs, found by tracing the model with
  ``torch.fx``. Zeroing a disabled feature of a ReLU-fed BN changes the ReLU's output only on the
  < 1 - dead_share of inputs where it was on. A BN whose output goes elsewhere first (in a ResNet:
  a block's second BN and its shortcut BN, which feed the residual sum) is *other*: there a
  disabled channel only never adds anything positive, and zeroing it removes a negative
  contribution to the sum. A model fx cannot trace gets no split (``null`` in analysis.json).
* Ablation: the disabled features' BN outputs are set to zero (forward hooks) and test accuracy
  is measured again; then as many features drawn uniformly at random from all BN features
  (several seeded draws) are zeroed instead. Features training has disabled should cost almost
  nothing; random ones should hurt. The same comparison is made within the ReLU-fed BNs alone
  and within the other BNs alone (random draws from that kind's features), which shows where the
  cost of the combined ablation comes from.

Accuracy always comes from :func:`bnonly.training.evaluate`; the off shares are counted by hooks
during the baseline evaluation itself, so one pass over the test set serves both.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import compute
from . import config as cfgmod
from .data import make_batches, open_dataset
from .models import create_model
from .rundir import RunDir, atomic_write_json, read_json
from .training import evaluate, resolve_device
from .errors import BnonlyError

DEFAULT_THRESHOLDS = (0.01, 0.05, 0.1)
DEFAULT_DEAD_SHARE = 0.99
DEFAULT_DRAWS = 5
ANALYSIS_FILE = "analysis.json"
FIGURE_PREFIX = "analysis_"
FORMAT_VERSION = 2
DESTINATION_LABELS = {"relu_fed": "ReLU-fed BNs", "other": "other BNs (residual side)"}


class AnalysisError(BnonlyError, ValueError):
    """A run or model that cannot be analysed (unfinished run, no BatchNorm layers, ...)."""


# --- statistics of γ and β -------------------------------------------------------------------

def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every BatchNorm layer, in module order, found by type (never by name)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


_RELU_FUNCTIONS = (F.relu, F.relu_, torch.relu, torch.relu_)


def relu_fed_batchnorms(model: nn.Module) -> set[str] | None:
    """Names of the BN layers whose output is used only by ReLUs, or None if fx cannot trace the model.

    Tracing sees the real data flow (a module's position in ``named_modules`` does not say
    whether a residual sum comes before its ReLU). Models with data-dependent control flow
    cannot be traced; they are analysed without the ReLU-fed/other split.
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # fx raises many types (TraceError, TypeError, ...) for untraceable code
        return None
    modules = dict(traced.named_modules())

    def is_relu(node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(modules[node.target], nn.ReLU)
        if node.op == "call_method":
            return node.target in ("relu", "relu_")
        return node.op == "call_function" and node.target in _RELU_FUNCTIONS

    return {node.target for node in traced.graph.nodes
            if node.op == "call_module" and isinstance(modules[node.target], _BatchNorm)
            and node.users and all(is_relu(user) for user in node.users)}


def affine_values(module: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(γ, β) as float CPU tensors; a layer without affine parameters acts as γ = 1, β = 0."""
    if not module.affine:
        return torch.ones(module.num_features), torch.zeros(module.num_features)
    return module.weight.detach().float().cpu(), module.bias.detach().float().cpu()


def describe(values: torch.Tensor) -> dict:
    """Mean, population std and quantiles of a 1-D tensor (None values for an empty one)."""
    v = values.detach().double().flatten().cpu()
    keys = ("mean", "std", "min", "q05", "q25", "median", "q75", "q95", "max")
    if v.numel() == 0:
        return dict(n=0, **{k: None for k in keys})
    q = torch.quantile(v, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)).tolist()
    return dict(n=v.numel(), mean=v.mean().item(), std=v.std(correction=0).item(), min=v.min().item(),
                q05=q[0], q25=q[1], median=q[2], q75=q[3], q95=q[4], max=v.max().item())


def threshold_key(t: float) -> str:
    """JSON key of a threshold: ``0.05 -> "0.05"``."""
    return format(t, "g")


def fraction_below(values: torch.Tensor, thresholds) -> dict[str, float]:
    """Threshold -> share of ``|values| < threshold``."""
    a = values.detach().abs().flatten()
    return {threshold_key(t): (a < t).double().mean().item() if a.numel() else None for t in thresholds}


def _share(mask: torch.Tensor, within: torch.Tensor) -> float | None:
    """Share of ``mask`` among the entries where ``within`` holds (None if there are none)."""
    n = int(within.sum())
    return int((mask & within).sum()) / n if n else None


def _compact(t: torch.Tensor) -> list[float]:
    """Per-channel values for JSON, at 6 significant digits (keeps analysis.json small)."""
    return [float(f"{x:.6g}") for x in t.tolist()]


# --- hooks: counting off features, zeroing features ------------------------------------------

def _active(out: torch.Tensor) -> torch.Tensor:
    """(N, C) bool: the channel's BN output is positive somewhere, so ReLU passes something."""
    positive = out.detach() > 0
    return positive.flatten(2).any(2) if positive.dim() > 2 else positive


class OffCounter:
    """While active, counts per BN channel the inputs whose ``ReLU(BN(x))`` is all zero."""

    def __init__(self, layers: list[tuple[str, _BatchNorm]]):
        self.layers = layers
        self.off: dict[str, torch.Tensor] = {}
        self.seen: dict[str, int] = {}
        self._handles = []

    def _hook(self, name: str):
        def hook(module, inputs, out):
            off = (~_active(out)).sum(0)
            self.off[name] = off if name not in self.off else self.off[name] + off
            self.seen[name] = self.seen.get(name, 0) + out.shape[0]
        return hook

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []

    def shares(self) -> dict[str, torch.Tensor]:
        """Layer name -> per-channel off share in [0, 1] (float64, CPU)."""
        if not self.seen:
            raise AnalysisError("no test inputs passed through the BatchNorm layers")
        return {n: self.off[n].double().cpu() / self.seen[n] for n, _ in self.layers}


@contextmanager
def zeroed_features(model: nn.Module, masks: dict[str, torch.Tensor]):
    """Within the block, BN layer ``name``'s output is zero on the channels where ``masks[name]``."""
    modules = dict(model.named_modules())
    handles = []
    for name, mask in masks.items():
        if not bool(mask.any()):
            continue
        keep = (~mask.bool()).to(torch.float32)

        def hook(module, inputs, out, keep=keep):
            shape = (1, -1) + (1,) * (out.dim() - 2)
            return out * keep.to(device=out.device, dtype=out.dtype).view(shape)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def random_masks(sizes: dict[str, int], n: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """``n`` features drawn uniformly without replacement over all layers, as per-layer masks."""
    total = sum(sizes.values())
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.from_numpy(rng.choice(total, size=n, replace=False))] = True
    return dict(zip(sizes, flat.split(list(sizes.values()))))


# --- the analysis of one model ---------------------------------------------------------------

def analyze_model(
    model: nn.Module,
    test_batches,
    *,
    init_state: dict[str, torch.Tensor] | None = None,
    thresholds=DEFAULT_THRESHOLDS,
    dead_share: float = DEFAULT_DEAD_SHARE,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    bf16: bool = False,
    device: torch.device | str = "cpu",
) -> dict:
    """Statistics, disabled features and ablation of ``model`` on ``test_batches``.

    ``init_state`` (a plain state dict of the initial weights) adds the initial γ/β for
    comparison. Returns the body of ``analysis.json`` (run metadata excluded).
    """
    thresholds = tuple(sorted(float(t) for t in thresholds))
    if not 0 < dead_share <= 1:
        raise AnalysisError(f"dead_share must be in (0, 1]; got {dead_share}")
    if draws < 1:
        raise AnalysisError(f"draws must be at least 1; got {draws}")
    device = torch.device(device)
    layers = bn_layers(model)
    if not layers:
        raise AnalysisError("the model has no BatchNorm layers: there is nothing to analyse")

    relu_fed = relu_fed_batchnorms(model)
    counter = OffCounter(layers)
    with counter:
        test = evaluate(model, test_batches, bf16=bf16, device=device)
    off = counter.shares()

    per_layer, dead_masks = [], {}
    gammas, betas, init_gammas, init_betas = [], [], [], []
    for name, module in layers:
        gamma, beta = affine_values(module)
        init_g = init_b = None
        if init_state is not None:
            w, b = init_state.get(f"{name}.weight"), init_state.get(f"{name}.bias")
            init_g = w.float().cpu() if w is not None else torch.ones_like(gamma)
            init_b = b.float().cpu() if b is not None else torch.zeros_like(beta)
            init_gammas.append(init_g)
            init_betas.append(init_b)
        dead = off[name] >= dead_share
        dead_masks[name] = dead
        gammas.append(gamma)
        betas.append(beta)
        channels = dict(gamma=_compact(gamma), beta=_compact(beta), off_share=_compact(off[name]))
        if init_g is not None:
            channels.update(init_gamma=_compact(init_g), init_beta=_compact(init_b))
        per_layer.append(dict(
            name=name, type=type(module).__name__, num_features=module.num_features, affine=module.affine,
            feeds_relu=None if relu_fed is None else name in relu_fed,
            gamma=describe(gamma), beta=describe(beta), init_gamma=describe(init_g) if init_g is not None else None,
            fraction_gamma_below=fraction_below(gamma, thresholds),
            n_dead=int(dead.sum()), fraction_dead=dead.double().mean().item(),
            channels=channels,
        ))

    gamma, beta = torch.cat(gammas), torch.cat(betas)
    dead = torch.cat([dead_masks[n] for n, _ in layers])
    by_kind = {} if relu_fed is None else _split_by_destination(dead_masks, relu_fed)
    result = dict(
        version=FORMAT_VERSION,
        options=dict(thresholds=list(thresholds), dead_share=dead_share, draws=draws, seed=seed),
        n_layers=len(layers),
        n_features=gamma.numel(),
        fraction_gamma_below=fraction_below(gamma, thresholds),
        n_dead=int(dead.sum()),
        fraction_dead=dead.double().mean().item(),
        dead_relation=_dead_relation(dead, gamma, beta, thresholds),
        **_relu_fed_counts(None if relu_fed is None else by_kind.get("relu_fed", {})),
        overall=dict(
            gamma=describe(gamma), abs_gamma=describe(gamma.abs()), beta=describe(beta),
            init_gamma=describe(torch.cat(init_gammas)) if init_gammas else None,
            init_beta=describe(torch.cat(init_betas)) if init_betas else None,
        ),
        test=dict(test, n_examples=test_batches.num_examples),
        layers=per_layer,
    )
    run_ablation = dict(baseline_acc=test["test_acc"], draws=draws, seed=seed, bf16=bf16, device=device)
    result["ablation"] = overall = ablation(model, test_batches, dead_masks, **run_ablation)
    # Where the model holds a single kind of BN (VGG: all ReLU-fed), its ablation is the overall one.
    overall["by_destination"] = None if relu_fed is None else {
        kind: dict(overall) if len(by_kind) == 1 else ablation(model, test_batches, masks, **run_ablation)
        for kind, masks in by_kind.items()}
    return result


def _split_by_destination(masks: dict[str, torch.Tensor], relu_fed: set[str]) -> dict[str, dict]:
    """{"relu_fed": masks of the ReLU-fed BNs, "other": masks of the rest}, leaving out an empty kind."""
    split = {"relu_fed": {n: m for n, m in masks.items() if n in relu_fed},
             "other": {n: m for n, m in masks.items() if n not in relu_fed}}
    return {kind: kind_masks for kind, kind_masks in split.items() if kind_masks}


def _relu_fed_counts(relu_fed_masks: dict[str, torch.Tensor] | None) -> dict:
    """Features of ReLU-fed BNs, and the disabled count and share among them (None without a trace)."""
    if relu_fed_masks is None:
        return dict(n_relu_fed_features=None, n_dead_relu_fed=None, fraction_dead_relu_fed=None)
    n_features = sum(m.numel() for m in relu_fed_masks.values())
    n_dead = int(sum(int(m.sum()) for m in relu_fed_masks.values()))
    return dict(n_relu_fed_features=n_features, n_dead_relu_fed=n_dead,
                fraction_dead_relu_fed=n_dead / n_features if n_features else None)


def _dead_relation(dead, gamma, beta, thresholds) -> dict:
    """How disabled features relate to small |γ| and to β < 0."""
    alive = ~dead
    small = {threshold_key(t): gamma.abs() < t for t in thresholds}
    return dict(
        fraction_of_dead_with_gamma_below={k: _share(s, dead) for k, s in small.items()},
        fraction_of_gamma_below_that_are_dead={k: _share(dead, s) for k, s in small.items()},
        fraction_of_dead_with_negative_beta=_share(beta < 0, dead),
        fraction_of_alive_with_negative_beta=_share(beta < 0, alive),
    )


def ablation(model, test_batches, disabled: dict[str, torch.Tensor], *, baseline_acc: float, draws: int,
             seed: int, bf16: bool, device) -> dict:
    """Test accuracy with the disabled features zeroed, and with as many random ones zeroed."""
    n = int(sum(int(m.sum()) for m in disabled.values()))
    sizes = {name: m.numel() for name, m in disabled.items()}
    if n == 0:
        # Zeroing nothing changes nothing: no need to evaluate again.
        random_accs = [baseline_acc] * draws
        zeroed_acc = baseline_acc
    else:
        with zeroed_features(model, disabled):
            zeroed_acc = evaluate(model, test_batches, bf16=bf16, device=device)["test_acc"]
        rng = np.random.default_rng(seed)
        random_accs = []
        for _ in range(draws):
            with zeroed_features(model, random_masks(sizes, n, rng)):
                random_accs.append(evaluate(model, test_batches, bf16=bf16, device=device)["test_acc"])
    return dict(
        criterion="disabled", n_zeroed=n, n_features=sum(sizes.values()), draws=draws, seed=seed,
        baseline_acc=baseline_acc, disabled_zeroed_acc=zeroed_acc,
        random_zeroed_acc=random_accs, random_zeroed_acc_mean=float(np.mean(random_accs)),
        random_zeroed_acc_std=float(np.std(random_accs, ddof=1)) if draws > 1 else 0.0,
    )


# --- runs ------------------------------------------------------------------------------------

def finished_runs(root: str | Path) -> list[Path]:
    """Run folders at or below ``root`` whose summary.json says "done", sorted by path."""
    root = Path(root)
    return [p.parent for p in sorted(root.rglob("summary.json")) if RunDir(p.parent).is_done()]


@dataclass
class LoadedRun:
    """A finished run, ready to evaluate: its final weights loaded into a plain model."""

    run: RunDir
    cfg: cfgmod.TrainConfig
    summary: dict
    model: nn.Module
    init_state: dict | None
    test_batches: object
    dataset: object
    device: torch.device
    bf16: bool


def load_run(path: str | Path, *, data: str | None = None, device: str = "cpu",
             threads: int | None = None) -> LoadedRun:
    """Load a finished run; ``data`` overrides the dataset path in config.json (moved data)."""
    run = RunDir(path)
    if not run.config.exists():
        raise AnalysisError(f"{run.path} is not a run folder (no config.json)")
    if not run.is_done():
        raise AnalysisError(f"run {run.path} has not finished (no summary.json with status 'done')")
    cfg = cfgmod.from_dict(read_json(run.config))
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    summary = run.read_summary()
    # Evaluate as the run trained when on the same kind of device; elsewhere as this one does best.
    # (Summaries from before compute settings were recorded hold bf16 and channels_last at the top.)
    trained_on = torch.device(summary.get("device", "cpu")).type
    recorded = summary.get("compute") or {k: summary[k] for k in ("bf16", "channels_last") if k in summary}
    settings, _ = compute.resolve(dict(bf16=cfg.bf16, channels_last=cfg.channels_last), compute.Capabilities.of(dev.type),
                                  recorded=recorded if trained_on == dev.type else None)
    bf16, channels_last = settings.bf16, settings.channels_last
    dataset = open_dataset(data or cfg.data, cache_dir=cfg.cache_dir)
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


def analyze_run(path: str | Path, *, thresholds=DEFAULT_THRESHOLDS, dead_share: float = DEFAULT_DEAD_SHARE,
                draws: int = DEFAULT_DRAWS, seed: int = 0, data: str | None = None, device: str = "cpu",
                threads: int | None = None, figures: bool = True, force: bool = False) -> dict:
    """Analyse one finished run and write ``analysis.json`` (and figures) into its folder.

    An existing analysis made with the same options is returned as is unless ``force``.
    """
    run = RunDir(path)
    options = dict(thresholds=sorted(float(t) for t in thresholds), dead_share=dead_share, draws=draws, seed=seed)
    existing = read_json(run.path / ANALYSIS_FILE)
    if existing and not force and existing.get("options") == options and existing.get("version") == FORMAT_VERSION:
        return existing
    started = time.perf_counter()
    loaded = load_run(path, data=data, device=device, threads=threads)
    cfg = loaded.cfg
    body = analyze_model(loaded.model, loaded.test_batches, init_state=loaded.init_state, thresholds=thresholds,
                         dead_share=dead_share, draws=draws, seed=seed, bf16=loaded.bf16, device=loaded.device)
    result = dict(
        run=run.path.name, model=cfg.model, train=cfg.train, seed=cfg.seed, epochs=cfg.epochs,
        bn_affine=cfg.bn_affine, gamma_init=cfg.gamma_init, dataset=loaded.dataset.name,
        num_classes=loaded.dataset.num_classes, summary_test_acc=loaded.summary.get("test_acc"),
        **body,
    )
    result["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(run.path / ANALYSIS_FILE, result)
    if figures:
        plot_run(result, run.path)
    return result


# --- figures ---------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the Agg backend, imported only when figures are drawn."""
    try:
        import matplotlib
    except ImportError:
        raise AnalysisError("figures need matplotlib: pip install 'bnonly[report]' (or pass --no-figures)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _channels(analysis: dict, key: str) -> np.ndarray:
    return np.concatenate([np.asarray(layer["channels"][key], dtype=float) for layer in analysis["layers"]])


def _title(analysis: dict) -> str:
    return f"{analysis.get('model', 'model')}, trains '{analysis.get('train', '?')}', seed {analysis.get('seed', '?')}"


def plot_run(analysis: dict, out_dir: str | Path) -> list[Path]:
    """The run's figures: γ/β histograms, per-layer fractions, γ vs β, ablation."""
    plt = pyplot()
    out_dir = Path(out_dir)
    paths = []
    has_init = all("init_gamma" in layer["channels"] for layer in analysis["layers"])
    gamma, beta = _channels(analysis, "gamma"), _channels(analysis, "beta")
    dead = _channels(analysis, "off_share") >= analysis["options"]["dead_share"]

    # 1. γ and β histograms, with the initial distribution.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(min(gamma.min(), 0), max(gamma.max(), 1), 41)
    axes[0].hist(gamma, bins=bins, color="C0", alpha=0.8, label="after training")
    if has_init:
        axes[0].hist(_channels(analysis, "init_gamma"), bins=bins, histtype="step", color="k", lw=1.5,
                     label="at initialization")
    axes[0].set(xlabel="γ (BatchNorm scale, unitless)", ylabel="features (count)", yscale="log",
                title="γ over all BN features")
    axes[1].hist(beta, bins=40, color="C1", alpha=0.8, label="after training")
    if has_init:
        axes[1].axvline(0, color="k", lw=1.5, label="at initialization (β = 0)")
    axes[1].set(xlabel="β (BatchNorm shift, unitless)", ylabel="features (count)", yscale="log",
                title="β over all BN features")
    for ax in axes:
        ax.legend()
    fig.suptitle(_title(analysis))
    paths.append(_save(plt, fig, out_dir / f"{FIGURE_PREFIX}gamma_beta.png"))

    # 2. Per layer: γ distribution, small-|γ| and disabled fractions.
    layers = analysis["layers"]
    names = [layer["name"] or "(root)" for layer in layers]
    x = np.arange(len(names))
    keys = list(analysis["fraction_gamma_below"])
    width = 0.8 / (len(keys) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.4 * len(names) + 3), 8), sharex=True)
    top.boxplot([layer["channels"]["gamma"] for layer in layers], positions=x + 0.4 - width / 2, widths=0.6,
                whis=(5, 95), showfliers=False)
    if has_init:
        top.plot(x + 0.4 - width / 2, [np.median(layer["channels"]["init_gamma"]) for layer in layers], "k_", ms=14,
                 label="median γ at initialization")
        top.legend(fontsize=8)
    top.axhline(0, color="gray", lw=0.5)
    top.set(ylabel="γ (unitless)",
            title=f"γ per layer (box: quartiles and median, whiskers: 5th-95th percentile)\n{_title(analysis)}")
    blues = plt.get_cmap("Blues")
    for i, k in enumerate(keys):
        bottom.bar(x + i * width, [100 * layer["fraction_gamma_below"][k] for layer in layers], width,
                   color=blues(0.35 + 0.55 * i / max(1, len(keys) - 1)), label=f"|γ| < {k}")
    bottom.bar(x + len(keys) * width, [100 * layer["fraction_dead"] for layer in layers], width, color="k",
               label=f"disabled (ReLU output zero for ≥ {analysis['options']['dead_share']:.0%} of test inputs)")
    bottom.set_xticks(x + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=8)
    highest = max([100 * layer["fraction_dead"] for layer in layers]
                  + [100 * v for layer in layers for v in layer["fraction_gamma_below"].values()])
    bottom.set(ylabel="features of the layer (%)", xlabel="BatchNorm layer (module order)",
               ylim=(0, min(100, 1.15 * highest + 5)), title="Small γ and disabled features per layer")
    bottom.legend(fontsize=8)
    paths.append(_save(plt, fig, out_dir / f"{FIGURE_PREFIX}layers.png"))

    # 3. γ against β, disabled features marked.
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(gamma[~dead], beta[~dead], s=6, alpha=0.5, color="C0", label=f"active ({int((~dead).sum())})")
    ax.scatter(gamma[dead], beta[dead], s=6, alpha=0.7, color="C3", label=f"disabled ({int(dead.sum())})")
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set(xlabel="γ (unitless)", ylabel="β (unitless)", title=f"γ and β per feature\n{_title(analysis)}")
    ax.legend()
    paths.append(_save(plt, fig, out_dir / f"{FIGURE_PREFIX}gamma_vs_beta.png"))

    # 4. Ablation: all BNs, then ReLU-fed and other BNs alone where the model could be traced.
    ab = analysis["ablation"]
    parts = [("all BNs", ab)] + [(DESTINATION_LABELS[k], v) for k, v in (ab.get("by_destination") or {}).items()]
    fig, ax = plt.subplots(figsize=(3 + 2.6 * len(parts), 4.5))
    width = 0.27
    ax.bar([0], [100 * ab["baseline_acc"]], width, color="C0", label="no features zeroed")
    for i, (label, part) in enumerate(parts):
        disabled, random = 100 * part["disabled_zeroed_acc"], 100 * part["random_zeroed_acc_mean"]
        spread = 100 * part["random_zeroed_acc_std"]
        x = i + 1
        ax.bar([x - width / 2], [disabled], width, color="C3", label="disabled features zeroed" if i == 0 else None)
        ax.bar([x + width / 2], [random], width, yerr=[spread], capsize=5, color="C7",
               label=f"as many random features zeroed ({part['draws']} draws)" if i == 0 else None)
        ax.text(x - width / 2, disabled + 1, f"{disabled:.1f}", ha="center", va="bottom", fontsize=8)
        ax.text(x + width / 2, random + spread + 1, f"{random:.1f}", ha="center", va="bottom", fontsize=8)
    ax.text(0, 100 * ab["baseline_acc"] + 1, f"{100 * ab['baseline_acc']:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(parts) + 1), ["baseline"] + [f"{label}\n{part['n_zeroed']} of {part['n_features']} "
                                                         "features" for label, part in parts])
    ax.set(ylabel="test accuracy (%)", ylim=(0, 110), title=f"Ablation of BN features\n{_title(analysis)}")
    ax.legend(fontsize=8, loc="upper right")
    paths.append(_save(plt, fig, out_dir / f"{FIGURE_PREFIX}ablation.png"))
    return paths


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- command line ----------------------------------------------------------------------------

def parse_thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise AnalysisError(f"--thresholds expects comma-separated numbers, e.g. 0.01,0.05,0.1; got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise AnalysisError(f"--thresholds must be positive numbers; got {text!r}")
    return values


def summary_line(a: dict) -> str:
    small = "  ".join(f"<{k}: {100 * v:.1f}%" for k, v in a["fraction_gamma_below"].items())
    ab = a["ablation"]
    lines = [
        f"{a.get('run', '')}",
        f"  test acc {a['test']['test_acc']:.4f}   |γ| {small}",
        f"  disabled (off for >= {a['options']['dead_share']:.0%} of {a['test']['n_examples']} test inputs): "
        f"{100 * a['fraction_dead']:.1f}% ({a['n_dead']}/{a['n_features']} features)"
        + (f"; of ReLU-fed BN features {100 * a['fraction_dead_relu_fed']:.1f}% "
           f"({a['n_dead_relu_fed']}/{a['n_relu_fed_features']})" if a.get("fraction_dead_relu_fed") is not None else ""),
    ]
    parts = [("ablation", ab)] + [(f"  {DESTINATION_LABELS[k]} only", v) for k, v in (ab.get("by_destination") or {}).items()]
    for label, part in parts:
        lines.append(f"  {label}: zero the {part['n_zeroed']} disabled -> acc {part['disabled_zeroed_acc']:.4f}; "
                     f"zero {part['n_zeroed']} random -> {part['random_zeroed_acc_mean']:.4f} "
                     f"± {part['random_zeroed_acc_std']:.4f} ({part['draws']} draws)")
    return "\n".join(lines)


def cmd_analyze(args) -> int:
    thresholds = parse_thresholds(args.thresholds)
    paths = []
    for p in args.run_dirs:
        p = Path(p)
        if (p / "config.json").exists():
            paths.append(p)
        else:
            found = finished_runs(p)
            if not found:
                raise AnalysisError(f"{p} is neither a run folder nor a folder holding finished runs")
            paths.extend(found)
    for p in paths:
        result = analyze_run(p, thresholds=thresholds, dead_share=args.dead_share, draws=args.draws, seed=args.seed,
                             data=args.data, device=args.device, threads=args.threads, figures=args.figures,
                             force=args.force)
        print(summary_line(result))
        print(f"  -> {p / ANALYSIS_FILE}")
    return 0


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="what BatchNorm learned in finished runs: γ/β statistics, disabled features, ablation",
        description="Writes analysis.json and analysis_*.png into each run folder and prints a summary.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="a run folder, or a folder below which every finished run is analysed")
    p.add_argument("--thresholds", default=",".join(map(threshold_key, DEFAULT_THRESHOLDS)),
                   help="|γ| thresholds for 'small γ', comma-separated (default: %(default)s)")
    p.add_argument("--dead-share", type=float, default=DEFAULT_DEAD_SHARE,
                   help="a feature is disabled if ReLU(BN(x)) is all zero for at least this share of test "
                        "inputs (default: %(default)s)")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help="random draws for the ablation baseline (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ablation draws (default: %(default)s)")
    p.add_argument("--data", default=None, help="dataset path, if it moved since training (default: config.json's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write analysis.json only")
    p.add_argument("--force", action="store_true", help="redo analyses that already exist with the same options")
    p.set_defaults(func=cmd_analyze)


__all__ = [
    "ANALYSIS_FILE", "AnalysisError", "DEFAULT_DEAD_SHARE", "DEFAULT_DRAWS", "DEFAULT_THRESHOLDS", "OffCounter",
    "LoadedRun", "ablation", "affine_values", "analyze_model", "analyze_run", "bn_layers", "describe", "finished_runs",
    "fraction_below", "load_run", "plot_run", "random_masks", "relu_fed_batchnorms", "summary_line", "zeroed_features",
]
