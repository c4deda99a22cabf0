"""A run's figures, drawn from its analysis.json: γ/β histograms, per-layer fractions, γ against β,
the ablation. matplotlib is imported only when a figure is drawn (the ``report`` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..extras import require
from .features import destination_label

FIGURE_PREFIX = "analysis_"


def pyplot():
    """matplotlib.pyplot, imported only when figures are drawn: on the Agg backend (files only) unless
    pyplot is already loaded, so a notebook that calls analyze_run keeps its inline figures."""
    matplotlib = require("matplotlib", "drawing figures (bnonly analyze without --no-figures, bnonly report)")
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def channels(section: dict, key: str) -> np.ndarray:
    """Per-channel values ``key`` of every layer of a section (e.g. the affine section's "gamma"), concatenated."""
    return np.concatenate([np.asarray(layer["channels"][key], dtype=float) for layer in section["layers"]])


def _dead(affine: dict, disabled: dict) -> np.ndarray:
    """Per feature, in layer order: whether the disabled section counts it as disabled (a layer
    where disabled features are not measured has none)."""
    return np.concatenate([np.isin(np.arange(a["num_features"]), d["dead_channels"] or [])
                           for a, d in zip(affine["layers"], disabled["layers"])])


def _title(analysis: dict) -> str:
    return f"{analysis.get('model', 'model')}, trains '{analysis.get('train', '?')}', seed {analysis.get('seed', '?')}"


def plot_run(analysis: dict, out_dir: str | Path) -> list[Path]:
    """The run's figures from its built-in sections: γ/β histograms, per-layer fractions, γ vs β,
    ablation (none for a model without normalization layers; no ablation where it does not apply)."""
    affine, disabled = analysis["sections"]["affine"], analysis["sections"]["disabled"]
    if not affine["layers"]:
        return []
    plt = pyplot()
    out_dir = Path(out_dir)
    paths = []
    dead_share = disabled["options"]["dead_share"]
    has_init = all("init_gamma" in layer["channels"] for layer in affine["layers"])
    gamma, beta = channels(affine, "gamma"), channels(affine, "beta")
    dead = _dead(affine, disabled)
    norms = disabled["norms"]
    word, layer_word = ("BN", "BatchNorm") if norms == "BNs" else ("norm", "normalization")
    off = ("ReLU output zero" if set(disabled["criteria"]) <= {"relu"}
           else "activation output ≈ 0, criterion per activation in analysis.json")

    # 1. γ and β histograms, with the initial distribution.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    bins = np.linspace(min(gamma.min(), 0), max(gamma.max(), 1), 41)
    axes[0].hist(gamma, bins=bins, color="C0", alpha=0.8, label="after training")
    if has_init:
        axes[0].hist(channels(affine, "init_gamma"), bins=bins, histtype="step", color="k", lw=1.5,
                     label="at initialization")
    axes[0].set(xlabel=f"γ ({layer_word} scale, unitless)", ylabel="features (count)", yscale="log",
                title=f"γ over all {word} features")
    axes[1].hist(beta, bins=40, color="C1", alpha=0.8, label="after training")
    if has_init:
        axes[1].axvline(0, color="k", lw=1.5, label="at initialization (β = 0)")
    axes[1].set(xlabel=f"β ({layer_word} shift, unitless)", ylabel="features (count)", yscale="log",
                title=f"β over all {word} features")
    for ax in axes:
        ax.legend()
    fig.suptitle(_title(analysis))
    paths.append(_save(plt, fig, out_dir / f"{FIGURE_PREFIX}gamma_beta.png"))

    # 2. Per layer: γ distribution, small-|γ| and disabled fractions.
    layers = affine["layers"]
    names = [layer["name"] or "(root)" for layer in layers]
    x = np.arange(len(names))
    keys = list(affine["fraction_gamma_below"])
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
    dead_fractions = [np.nan if layer["fraction_dead"] is None else 100 * layer["fraction_dead"]
                      for layer in disabled["layers"]]
    measured = disabled["n_measured"]
    bottom.bar(x + len(keys) * width, dead_fractions, width, color="k",
               label="disabled: not applicable (no layer's output reaches a ReLU-like activation)" if not measured
               else f"disabled ({off} for ≥ {dead_share:.0%} of test inputs)"
               + ("" if measured == disabled["n_features"] else "; no bar: not applicable"))
    bottom.set_xticks(x + 0.4 - width / 2, names, rotation=60, ha="right", fontsize=8)
    highest = np.nanmax(dead_fractions + [100 * v for layer in layers for v in layer["fraction_gamma_below"].values()])
    bottom.set(ylabel="features of the layer (%)", xlabel=f"{layer_word.capitalize()} layer (module order)",
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

    # 4. Ablation: all layers, then ReLU-fed and other layers alone.
    ab = analysis["sections"]["ablation"]
    if ab.get("not_applicable"):
        return paths
    kinds = (ab.get("by_destination") or {}).items()
    parts = [(f"all {norms}", ab)] + [(destination_label(k, norms), v) for k, v in kinds]
    fig, ax = plt.subplots(figsize=(3 + 2.6 * len(parts), 4.5))
    width = 0.27
    ax.bar([0], [100 * ab["baseline_acc"]], width, color="C0", label="no features zeroed")
    for i, (_, part) in enumerate(parts):
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
    ax.set(ylabel="test accuracy (%)", ylim=(0, 110), title=f"Ablation of {word} features\n{_title(analysis)}")
    ax.legend(fontsize=8, loc="upper right")
    paths.append(_save(plt, fig, out_dir / f"{FIGURE_PREFIX}ablation.png"))
    return paths


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
