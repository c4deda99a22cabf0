"""The built-in evaluators: ``affine`` (γ/β statistics of every normalization layer), ``disabled``
(disabled features wherever a layer's output reaches a ReLU-like activation, with the ReLU-fed
split), ``ablation`` (zeroing the disabled features against as many random ones) and ``supermask``
(for a ``supermask:P`` run: which weights each layer kept, how far that set moved from the initial
top-k, and how it relates to the disabled features).

``disabled`` makes the one baseline pass over the test set (``ctx.baseline``: accuracy and off
shares together) and records the disabled features exactly; ``ablation`` reads them from that
section, so a new number of draws redoes only the ablation's own passes.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import layers as layer_kinds
from ..trainable import parse_spec
from .evaluators import AnalysisContext, Column, evaluator
from .features import (
    ACTIVATIONS,
    DESTINATION_LABELS,
    affine_values,
    destination_label,
    feature_count,
    norm_kind,
    norms_word,
    random_masks,
    split_by_destination,
    weight_neighbours,
)
from .stats import compact, describe, fraction_below, share, threshold_key

NO_NORMS = "the model has no normalization layers"


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(tensors) if tensors else torch.zeros(0)


# --- affine: γ and β --------------------------------------------------------------------------

def _affine_summary(s: dict) -> list[str]:
    if s.get("not_applicable"):
        return [f"|γ|: n/a ({s['not_applicable']})"]
    return ["|γ| " + "  ".join(f"<{k}: {100 * v:.1f}%" for k, v in s["fraction_gamma_below"].items())]


@evaluator("affine", version=2, options=("thresholds",), summary=_affine_summary, columns=(
    Column("n_features", lambda s: s["n_features"]),
    Column("gamma_below_{key}", lambda s: s["fraction_gamma_below"], "|γ| < {key}", key_order=float),
))
def affine(ctx: AnalysisContext, options: dict) -> dict:
    """γ and β of every normalizer after training (and at initialization, given init.pt): per layer and overall."""
    thresholds = options["thresholds"]
    per_layer, gammas, betas, init_gammas, init_betas = [], [], [], [], []
    for name, module in ctx.layers:
        gamma, beta = affine_values(module)
        channels = dict(gamma=compact(gamma), beta=compact(beta))
        init_g = None
        if ctx.init_state is not None:
            w, b = ctx.init_state.get(f"{name}.weight"), ctx.init_state.get(f"{name}.bias")
            init_g = w.float().cpu().flatten() if w is not None else torch.ones_like(gamma)
            init_b = b.float().cpu().flatten() if b is not None else torch.zeros_like(beta)
            init_gammas.append(init_g)
            init_betas.append(init_b)
            channels.update(init_gamma=compact(init_g), init_beta=compact(init_b))
        gammas.append(gamma)
        betas.append(beta)
        per_layer.append(dict(
            name=name, type=type(module).__name__, kind=norm_kind(module), num_features=feature_count(module),
            affine=getattr(module, "weight", None) is not None, has_beta=getattr(module, "bias", None) is not None,
            gamma=describe(gamma), beta=describe(beta), init_gamma=describe(init_g) if init_g is not None else None,
            fraction_gamma_below=fraction_below(gamma, thresholds), channels=channels,
        ))
    gamma, beta = _cat(gammas), _cat(betas)
    return dict(
        not_applicable=None if per_layer else NO_NORMS,
        n_layers=len(per_layer), n_features=gamma.numel(), fraction_gamma_below=fraction_below(gamma, thresholds),
        overall=dict(
            gamma=describe(gamma), abs_gamma=describe(gamma.abs()), beta=describe(beta),
            init_gamma=describe(torch.cat(init_gammas)) if init_gammas else None,
            init_beta=describe(torch.cat(init_betas)) if init_betas else None,
        ),
        layers=per_layer,
    )


# --- disabled features ------------------------------------------------------------------------

def _disabled_summary(s: dict) -> list[str]:
    if s["fraction_dead"] is None:
        return [f"test acc {s['test']['test_acc']:.4f}; disabled: n/a ({s['not_applicable']})"]
    line = (f"test acc {s['test']['test_acc']:.4f}; disabled (off for >= {s['options']['dead_share']:.0%} of "
            f"{s['test']['n_examples']} test inputs): {100 * s['fraction_dead']:.1f}% "
            f"({s['n_dead']}/{s['n_measured']} features")
    measured_all = s["n_measured"] == s["n_features"]
    line += ")" if measured_all else f" of layers feeding an activation; {s['n_features']} in all)"
    if s.get("fraction_dead_relu_fed") is not None:
        line += (f"; of ReLU-fed {s['norms'][:-1]} features {100 * s['fraction_dead_relu_fed']:.1f}% "
                 f"({s['n_dead_relu_fed']}/{s['n_relu_fed_features']})")
    return [line]


@evaluator("disabled", version=2, options=("thresholds", "dead_share"), summary=_disabled_summary, columns=(
    Column("fraction_dead", lambda s: s["fraction_dead"], "disabled"),
    Column("n_dead", lambda s: s["n_dead"]),
    Column("dead_share", lambda s: s["options"]["dead_share"]),
    Column("dead_with_negative_beta", lambda s: s["dead_relation"]["fraction_of_dead_with_negative_beta"],
           "disabled with β < 0", spread=None),
    # Absent from sections migrated from format 1 (before the split).
    Column("fraction_dead_relu_fed", lambda s: s.get("fraction_dead_relu_fed"),
           "disabled, " + DESTINATION_LABELS["relu_fed"], table="by_destination"),
))
def disabled(ctx: AnalysisContext, options: dict) -> dict:
    """Disabled features (off on at least dead_share of test inputs for the activation the layer feeds), overall
    and among ReLU-fed layers; not applicable where a layer's output reaches no ReLU-like activation."""
    test, off = ctx.baseline
    (dests, untraced), measured = ctx.traced, dict(ctx.measured)
    traced = "" not in untraced
    masks = {name: off[name] >= options["dead_share"] for name in measured}
    per_layer = []
    for name, _ in ctx.layers:
        d, mask = dests[name], masks.get(name)
        per_layer.append(dict(
            name=name, destination=d.kind, activation=d.activation, not_applicable=d.not_applicable,
            n_dead=None if mask is None else int(mask.sum()),
            fraction_dead=None if mask is None else mask.double().mean().item(),
            dead_channels=None if mask is None else mask.nonzero().flatten().tolist(),
            channels=dict(off_share=None if mask is None else compact(off[name]))))
    values = [affine_values(m) for m in measured.values()]
    gamma, beta = _cat([g for g, _ in values]), _cat([b for _, b in values])
    dead = _cat(list(masks.values())).bool()
    n_measured = dead.numel()
    relu_fed = split_by_destination(masks, {name: dests[name].kind for name in masks}).get("relu_fed", {})
    return dict(
        test=test, traced=traced, untraced=untraced, norms=norms_word(norm_kind(m) for _, m in ctx.layers),
        criteria={a: ACTIVATIONS[a].criterion for a in dict.fromkeys(dests[n].activation for n in measured)},
        not_applicable=None if n_measured else _why_not(ctx, dests),
        n_features=sum(feature_count(m) for _, m in ctx.layers), n_measured=n_measured,
        n_dead=int(dead.sum()) if n_measured else None,
        fraction_dead=dead.double().mean().item() if n_measured else None,
        dead_relation=_dead_relation(dead, gamma, beta, options["thresholds"]),
        **_relu_fed_counts(relu_fed if traced else None),
        layers=per_layer,
    )


def _why_not(ctx: AnalysisContext, dests) -> str:
    """Why no layer of the model has disabled features to measure."""
    if not ctx.layers:
        return NO_NORMS
    if len(set(dests.values())) == 1:  # e.g. fx could trace no part of the model
        return next(iter(dests.values())).not_applicable
    name = ctx.layers[0][0] or "(root)"
    return (f"no normalization layer's output reaches a ReLU-like activation ({', '.join(ACTIVATIONS)}), directly "
            f"or through a residual sum; e.g. {name}: {dests[ctx.layers[0][0]].not_applicable}")


def _relu_fed_counts(relu_fed_masks: dict[str, torch.Tensor] | None) -> dict:
    """Features of ReLU-fed layers, and the disabled count and share among them (None without a trace)."""
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
        fraction_of_dead_with_gamma_below={k: share(s, dead) for k, s in small.items()},
        fraction_of_gamma_below_that_are_dead={k: share(dead, s) for k, s in small.items()},
        fraction_of_dead_with_negative_beta=share(beta < 0, dead),
        fraction_of_alive_with_negative_beta=share(beta < 0, alive),
    )


def dead_masks(disabled_section: dict) -> dict[str, torch.Tensor]:
    """Layer name -> bool mask of its disabled features, as a ``disabled`` section records them, for
    every layer where they are measured."""
    masks = {}
    for layer in disabled_section["layers"]:
        if layer["fraction_dead"] is None:
            continue
        masks[layer["name"]] = mask = torch.zeros(len(layer["channels"]["off_share"]), dtype=torch.bool)
        mask[layer["dead_channels"]] = True
    return masks


# --- ablation ---------------------------------------------------------------------------------

def _ablation_summary(s: dict) -> list[str]:
    if s.get("not_applicable"):
        return [f"ablation: n/a ({s['not_applicable']})"]
    kinds = (s.get("by_destination") or {}).items()
    parts = [("ablation", s)] + [(f"  {destination_label(k, s['norms'])} only", v) for k, v in kinds]
    return [f"{label}: zero the {p['n_zeroed']} disabled -> acc {p['disabled_zeroed_acc']:.4f}; "
            f"zero {p['n_zeroed']} random -> {p['random_zeroed_acc_mean']:.4f} ± {p['random_zeroed_acc_std']:.4f} "
            f"({p['draws']} draws)" for label, p in parts]


def _per_kind(key: str):
    """Getter of ``key`` of each kind's ablation (absent before the split: format 1)."""
    return lambda s: {kind: part[key] for kind, part in (s.get("by_destination") or {}).items()}


_KIND = dict(key_label=DESTINATION_LABELS.get, key_order=list(DESTINATION_LABELS).index)


@evaluator("ablation", version=2, options=("draws", "seed"), needs=("disabled",), summary=_ablation_summary,
           columns=(
    Column("ablation_n_zeroed", lambda s: s["n_zeroed"]),
    Column("ablation_baseline_acc", lambda s: s["baseline_acc"], "acc", spread=None),
    Column("ablation_disabled_zeroed_acc", lambda s: s["disabled_zeroed_acc"], "disabled zeroed", spread=None),
    Column("ablation_random_zeroed_acc_mean", lambda s: s["random_zeroed_acc_mean"], "as many random zeroed",
           spread="ablation_random_zeroed_acc_std"),
    Column("ablation_random_zeroed_acc_std", lambda s: s["random_zeroed_acc_std"]),
    Column("ablation_{key}_n_zeroed", _per_kind("n_zeroed"), "{key}: n zeroed", "by_destination", spread=None,
           unit="count", **_KIND),
    Column("ablation_{key}_disabled_zeroed_acc", _per_kind("disabled_zeroed_acc"), "{key}: disabled zeroed",
           "by_destination", spread=None, **_KIND),
    Column("ablation_{key}_random_zeroed_acc_mean", _per_kind("random_zeroed_acc_mean"),
           "{key}: as many random zeroed", "by_destination", spread="ablation_{key}_random_zeroed_acc_std", **_KIND),
    Column("ablation_{key}_random_zeroed_acc_std", _per_kind("random_zeroed_acc_std")),
))
def ablation_section(ctx: AnalysisContext, options: dict) -> dict:
    """Accuracy with the disabled features zeroed vs as many random ones, overall and per kind of layer."""
    disabled_section = ctx.sections["disabled"]
    run = dict(baseline_acc=disabled_section["test"]["test_acc"], draws=options["draws"], seed=options["seed"])
    if disabled_section["fraction_dead"] is None:
        return dict(run, not_applicable=disabled_section["not_applicable"], norms=disabled_section["norms"],
                    criterion="disabled", n_zeroed=None, n_features=0, disabled_zeroed_acc=None,
                    random_zeroed_acc=None, random_zeroed_acc_mean=None, random_zeroed_acc_std=None,
                    by_destination=None)
    masks = dead_masks(disabled_section)
    by_kind = split_by_destination(masks, {layer["name"]: layer["destination"] for layer in disabled_section["layers"]})
    overall = ablation(ctx, masks, **run)
    # Where the model holds a single kind of layer (VGG: all ReLU-fed), its ablation is the overall one.
    overall["by_destination"] = {kind: dict(overall) if len(by_kind) == 1 else ablation(ctx, kind_masks, **run)
                                 for kind, kind_masks in by_kind.items()}
    return dict(overall, not_applicable=None, norms=disabled_section["norms"])


def ablation(ctx: AnalysisContext, disabled: dict[str, torch.Tensor], *, baseline_acc: float, draws: int,
             seed: int) -> dict:
    """Test accuracy with the ``disabled`` features zeroed, and with as many random ones zeroed
    (``draws`` seeded draws over the same layers)."""
    n = int(sum(int(m.sum()) for m in disabled.values()))
    sizes = {name: m.numel() for name, m in disabled.items()}
    if n == 0:
        # Zeroing nothing changes nothing: no need to evaluate again.
        random_accs = [baseline_acc] * draws
        zeroed_acc = baseline_acc
    else:
        zeroed_acc = ctx.accuracy(disabled)
        rng = np.random.default_rng(seed)
        random_accs = [ctx.accuracy(random_masks(sizes, n, rng)) for _ in range(draws)]
    return dict(
        criterion="disabled", n_zeroed=n, n_features=sum(sizes.values()), draws=draws, seed=seed,
        baseline_acc=baseline_acc, disabled_zeroed_acc=zeroed_acc,
        random_zeroed_acc=random_accs, random_zeroed_acc_mean=float(np.mean(random_accs)),
        random_zeroed_acc_std=float(np.std(random_accs, ddof=1)) if draws > 1 else 0.0,
    )


# --- supermask: the weights a supermask run kept -----------------------------------------------

NOT_SUPERMASK = "the run trained no supermask (its what-trains spec has no 'supermask:P' term)"


def _supermask_summary(s: dict) -> list[str]:
    if s.get("not_applicable"):
        return [f"supermask: n/a ({s['not_applicable']})"]
    line = f"supermask: kept {100 * s['kept_fraction']:.1f}% of {s['n_weights']:,} weights"
    if s["kept_from_initial"] is not None:
        line += f"; {100 * s['kept_from_initial']:.1f}% of the kept set was in the initial top-k"
    rel = s["disabled_relation"]
    if rel and rel["feeding_disabled"] is not None:
        line += (f"; kept of the weights feeding disabled features {100 * rel['feeding_disabled']:.1f}% "
                 f"(others {100 * rel['feeding_enabled']:.1f}%)")
    return [line]


def _kept_share(kept: list[torch.Tensor]) -> float | None:
    flat = _cat([k.flatten() for k in kept])
    return flat.double().mean().item() if flat.numel() else None


def _relation(ctx: AnalysisContext, kept: dict[str, torch.Tensor]) -> dict | None:
    """Kept shares of the weights around disabled features against those around the others: the
    rows of the layer each measured norm normalizes, the columns of the layers reading its output."""
    section = ctx.sections["disabled"]
    if section["fraction_dead"] is None:
        return None
    parts = {k: [] for k in ("feeding_disabled", "feeding_enabled", "reading_disabled", "reading_enabled")}
    n_layers = 0
    neighbours = weight_neighbours(ctx.model)
    for name, dead in dead_masks(section).items():
        producer, readers = neighbours.get(name, (None, []))
        if producer in kept and kept[producer].shape[0] == dead.numel():
            parts["feeding_disabled"].append(kept[producer][dead])
            parts["feeding_enabled"].append(kept[producer][~dead])
            n_layers += 1
        for reader in readers:
            if reader in kept and kept[reader].dim() >= 2 and kept[reader].shape[1] == dead.numel():
                parts["reading_disabled"].append(kept[reader][:, dead])
                parts["reading_enabled"].append(kept[reader][:, ~dead])
    n_dead = int(sum(int(m.sum()) for m in dead_masks(section).values()))
    return dict(n_disabled_features=n_dead, n_layers_with_producer=n_layers,
                **{k: _kept_share(v) for k, v in parts.items()})


def _related(key: str):
    return lambda s: (s["disabled_relation"] or {}).get(key)


# Columns of runs.csv and groups.csv only (no label): in report.md's "What BatchNorm learned" table they
# would be n/a for every run that is not a supermask run.
@evaluator("supermask", version=1, needs=("disabled",), summary=_supermask_summary, columns=(
    Column("supermask_kept", lambda s: s["kept_fraction"]),
    Column("supermask_kept_from_initial", lambda s: s["kept_from_initial"]),
    *(Column(f"supermask_kept_{key}", _related(key))
      for key in ("feeding_disabled", "feeding_enabled", "reading_disabled", "reading_enabled")),
))
def supermask(ctx: AnalysisContext, options: dict) -> dict:
    """A supermask run's kept weights per conv/linear layer, their overlap with the initial top-k, and the kept shares
    around disabled features."""
    terms = [t.partition(":")[0] for t in parse_spec(ctx.train)] if ctx.train else []
    if "supermask" not in terms:
        return dict(not_applicable=NOT_SUPERMASK if ctx.train else "the run's what-trains spec is not known",
                    n_weights=None, n_kept=None, kept_fraction=None, kept_from_initial=None, disabled_relation=None,
                    layers=[])
    # A weight is kept where its effective (masked) value is nonzero: final.pt holds the frozen
    # weights times the mask. A frozen weight that is exactly 0 would count as dropped either way.
    per_layer, kept, overlap, n_initial = [], {}, 0, 0
    for name, module in layer_kinds.weight_layers(ctx.model):
        mask = module.weight.detach().cpu() != 0
        kept[name] = mask
        init = None if ctx.init_state is None else ctx.init_state.get(f"{name}.weight")
        init_mask = None if init is None else init.cpu() != 0
        if init_mask is not None:
            overlap += int((mask & init_mask).sum())
            n_initial += int(init_mask.sum())
        per_layer.append(dict(
            name=name, type=type(module).__name__, shape=list(mask.shape), n_weights=mask.numel(),
            n_kept=int(mask.sum()), kept_fraction=mask.double().mean().item(),
            kept_from_initial=None if init_mask is None else share(init_mask, mask),
            dropped_from_initial=None if init_mask is None else int((init_mask & ~mask).sum())))
    n_weights = sum(m.numel() for m in kept.values())
    n_kept = int(sum(int(m.sum()) for m in kept.values()))
    return dict(not_applicable=None, n_weights=n_weights, n_kept=n_kept, kept_fraction=n_kept / n_weights,
                kept_from_initial=overlap / n_kept if n_initial and n_kept else None,
                disabled_relation=_relation(ctx, kept), layers=per_layer)
