"""``bnonly report RUNS_DIR``: every finished run below a folder in one table and one report.

Writes into ``--out`` (default ``RUNS_DIR/report``)::

    runs.csv, runs.jsonl   one row per finished run (pandas: pd.read_csv / pd.read_json(p, lines=True))
    groups.csv             model x what-trains (x variant): mean and std over seeds
    report.md              tables and figures/*.png: accuracy per model x what-trains, accuracy
                           against depth, width and trainable parameters with the paper's numbers
                           (marked as such), γ histograms, disabled fractions and the ablation

Runs are grouped by model, what-trains spec and *variant*: the other identity fields of the
config (epochs, lr, bn_stats, ...) that differ among the runs gathered, so runs of different
recipes are never averaged together. Each run's architecture (``family``, ``depth``, ``width``)
comes from the MODEL_FAMILIES pattern its name matches, and its ``normalizer`` from the model
itself (built on the meta device); tables and figures are ordered and split by them, and a name no
registered family builds is reported as it is (family = the name, normalizer "unknown").
At the paper's schedule (the recipe's 160 epochs) each configuration the paper has a number for
gets bnonly's number, the paper's v1 figure's and the faithful port's side by side, with the
disabled fractions and the ablation. γ/disabled-feature results come from each run's ``analysis.json``
(``bnonly analyze``, or ``--analyze`` here; older formats are migrated when read): every column
that a registered evaluator declares (:class:`bnonly.analysis.Column`) becomes a column of runs.csv
and groups.csv and, if it has a label, of the report.md table it names.
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import analysis as an
from . import config as cfgmod
from . import paper_numbers as paper
from .errors import BnonlyError
from .extras import require
from .models import ModelNameError, cifar_resnet, create_model, family_of, imagenet_resnet
from .rundir import RunDir
from .sweep import expand, load_spec


class ReportError(BnonlyError, ValueError):
    """Nothing to report on."""


_DEFAULT_WIDTH = {"cifar_resnet": cifar_resnet.DEFAULT_WIDTH, "imagenet_resnet": imagenet_resnet.DEFAULT_WIDTH}
_NOT_VARIANT = {"model", "train", "seed", "selection_seed"} | set(cfgmod.IDENTITY_EXCLUDED)
# Specs in the order tables and legends list them; others follow alphabetically.
_SPEC_ORDER = ("all", "bn", "norm", "bn+output", "gamma", "beta", "bias", "output", "random-per-channel:2",
               "random:matched")
_SETUP_FIELDS = ("data", "epochs", "schedule_epochs", "milestones", "lr", "lr_gamma", "warmup_epochs", "batch_size",
                 "momentum", "weight_decay", "augment", "normalize", "gamma_init", "bn_affine")


def model_shape(name: str) -> tuple[str, int | None, int | None]:
    """(family, depth, width) of a model name: the MODEL_FAMILIES family whose pattern it matches and
    that pattern's ``depth`` and ``width`` groups (None where it has none); a name no family
    matches gives (name, None, None)."""
    try:
        family = family_of(name)
    except ModelNameError:
        return name, None, None
    groups = family.regex.fullmatch(name).groupdict()
    depth, width = (int(g) if g and g.isdigit() else None for g in (groups.get("depth"), groups.get("width")))
    return family.name, depth, width if width is not None else _DEFAULT_WIDTH.get(family.name)


def model_normalizer(name: str) -> str:
    """The model's normalizers (:func:`bnonly.analysis.normalizer_name` of it, built on the meta
    device): "BatchNorm", "GroupNorm(8)", "none", ...; "unknown" for a name no family builds."""
    try:
        return an.normalizer_name(create_model(name, device="meta"))
    except ModelNameError:
        return "unknown"


def _spec_key(spec: str):
    return (_SPEC_ORDER.index(spec), "") if spec in _SPEC_ORDER else (len(_SPEC_ORDER), spec)


# --- gathering -------------------------------------------------------------------------------

def collect(root: str | Path) -> tuple[list[dict], dict[str, dict], list[dict]]:
    """One row per finished run below ``root`` (with the numbers the registered evaluators declare),
    run -> its analysis.json (when present, in today's format), and each run's config.json (in row order)."""
    root = Path(root)
    rows, analyses, configs, normalizers = [], {}, [], {}
    for path in an.finished_runs(root):
        run = RunDir(path)
        summary, cfg = run.read_summary(), run.read_config() or {}
        family, depth, width = model_shape(summary["model"])
        if summary["model"] not in normalizers:
            normalizers[summary["model"]] = model_normalizer(summary["model"])
        bn_statistics = summary.get("bn_statistics") or an.PRE_RECORD_BN_STATISTICS
        name = str(path.relative_to(root)) if path != root else path.name
        row = dict(
            run=name, model=summary["model"], family=family, depth=depth, width=width,
            normalizer=normalizers[summary["model"]], train=summary["train"],
            seed=summary["seed"], epochs=cfg.get("epochs"), schedule_epochs=cfg.get("schedule_epochs"),
            data=cfg.get("data"), test_acc=summary["test_acc"], test_top5=summary.get("test_top5"),
            trainable_params=summary.get("trainable_params"), total_params=summary.get("total_params"),
            bn_params=summary.get("bn_params"), wall_seconds=summary.get("wall_seconds"),
            images_per_second=summary.get("images_per_second"), device=summary.get("device"),
            bn_train=bn_statistics["train"], bn_eval=bn_statistics["eval"], precision=_precision(summary),
        )
        a = an.read_analysis(path)
        row["analyzed"] = a is not None
        if a is not None:
            analyses[name] = a
            row.update(an.column_values(a))
        configs.append(normalized(cfg))
        row["off_recipe"] = ",".join(off_recipe(configs[-1]))
        rows.append(row)
    for row, variant in zip(rows, _variants(configs, [row["precision"] for row in rows])):
        row["variant"] = variant
    return rows, analyses, configs


def _precision(summary: dict) -> str:
    """The arithmetic a run trained in, from its summary's compute settings: "bf16" (autocast) or
    "float32"; "—" where the summary does not record it."""
    bf16 = (summary.get("compute") or {}).get("bf16")
    return "—" if bf16 is None else "bf16" if bf16 else "float32"


def normalized(cfg: dict) -> dict:
    """A run's config.json in today's terms, so runs of one recipe written by older versions compare
    equal: fields added since take their (no-op) defaults, and ``augment`` "cifar"/"imagenet" read
    as "auto", which is exactly what "auto" picks wherever those are valid (arrays / streamed folders)."""
    values = cfgmod.TrainConfig().to_dict() | cfg
    if values.get("augment") in ("cifar", "imagenet"):
        values["augment"] = "auto"
    return values


def _variants(configs: list[dict], precisions: list[str]) -> list[str]:
    """Per run, among the identity fields (other than model, spec and seed) that differ among the
    runs, those in which it leaves the recipe ("recipe" for a run that leaves it in none): two runs
    that differ in a field cannot both be at the recipe's value there, so the label tells them apart.
    Where the runs trained in different arithmetic (``precisions``: bf16 autocast beside float32, a
    compute setting that leaves run identities alone), every label says which: runs of one
    configuration in different arithmetic are not averaged together, and no table hides the difference."""
    keys = [k for k in cfgmod.field_names() if k not in _NOT_VARIANT
            and len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    mixed = len(set(precisions)) > 1
    labels = []
    for c, precision in zip(configs, precisions):
        recipe = _recipe(c)
        shown = [f"{k}={_fmt_field(k, c.get(k))}" for k in keys if not _same(c, recipe, k)]
        shown += [f"precision={precision}"] if mixed else []
        labels.append(", ".join(shown) or ("recipe" if keys else ""))
    return labels


def _fmt_field(key: str, v) -> str:
    if v is None or v == "":
        return "—"
    if key == "init_from":  # a path; the source run's folder name says which run it is
        return Path(v).name
    return _fmt_value(v)


def _fmt_value(v) -> str:
    if isinstance(v, list):
        return ",".join(map(_fmt_value, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


#: Fields a run may change and still be set beside the published numbers: the copy of the data and
#: the schedule's length are stated next to every comparison, and these two do not change what is learned.
_COMPARABLE_CHANGES = {"data", "epochs", "eval_every", "sync_bn"}


def _recipe(cfg: dict) -> dict:
    """The paper's recipe for a run's model family, as a config: the field defaults for CIFAR, the
    imagenet preset for ImageNet ResNets. (Read only: the same dict for every run of a family.)"""
    return _RECIPES["imagenet" if cfg.get("model", "").startswith("imagenet_") else "cifar10"]


_RECIPES = {name: normalized(cfgmod.TrainConfig().replace(
    **{k: v for k, v in cfgmod.PRESETS[name].items() if k != "model"}).to_dict()) for name in ("cifar10", "imagenet")}


def _same(a: dict, b: dict, key: str) -> bool:
    return json.dumps(a.get(key), sort_keys=True) == json.dumps(b.get(key), sort_keys=True)


def off_recipe(cfg: dict) -> list[str]:
    """The identity fields in which a run (its config.json in today's terms) leaves the paper's recipe
    for its model family, other than the data and the schedule's length. A run with any (a class
    subset, a transfer, a control) is a different experiment: the report does not set it beside the
    published numbers."""
    recipe = _recipe(cfg)
    return [k for k in cfgmod.field_names() if k not in _NOT_VARIANT | _COMPARABLE_CHANGES
            and not _same(cfg, recipe, k)]


def _off_recipe_label(cfg: dict) -> str:
    """``field=value, ...`` for the fields in which a run leaves the recipe: what tells apart, in the
    list of unfinished runs, two runs of one model and spec (edge-popup's setting beside plain
    ``supermask:50``)."""
    values = normalized(cfg)
    return ", ".join(f"{k}={_fmt_field(k, values.get(k))}" for k in off_recipe(values))


#: The status of a sweep's run that has no folder among the runs gathered.
NO_FOLDER = "not among these runs (not started, or training in another folder)"


def unfinished(root: str | Path, sweep_file: str | Path | None = None) -> list[dict]:
    """Runs not finished: run folders below ``root`` without a "done" summary (running,
    interrupted or failed) and, given a sweep file, the sweep's runs with no folder below ``root``:
    not started, or training in another folder (results/ folders gather finished runs only, while
    the runs train elsewhere), which ``root`` cannot tell apart."""
    out, seen = [], set()
    for cfg_path in sorted(Path(root).rglob("config.json")):
        run = RunDir(cfg_path.parent)
        if run.is_done():
            continue
        seen.add(run.path.name)
        cfg, summary, metrics = run.read_config() or {}, run.read_summary() or {}, run.read_metrics()
        if summary.get("status") == "failed":
            status = "failed: " + summary.get("reason", "")
        else:
            status = "training now" if run.is_locked() else "interrupted"
            status += f", {metrics[-1]['epoch']:g} of {cfg.get('epochs', 0):g} epochs done" if metrics else \
                ", no epoch done yet"
        out.append(dict(run=run.path.name, model=cfg.get("model"), train=cfg.get("train"), seed=cfg.get("seed"),
                        off_recipe=_off_recipe_label(cfg), status=status))
    if sweep_file is not None:
        for cfg in expand(load_spec(sweep_file), out=str(root)):
            if cfg.run_name not in seen and not RunDir(Path(root) / cfg.run_name).is_done():
                out.append(dict(run=cfg.run_name, model=cfg.model, train=cfg.train, seed=cfg.seed,
                                off_recipe=_off_recipe_label(cfg.to_dict()), status=NO_FOLDER))
    return out


@dataclass(frozen=True)
class ReportColumn:
    """A declared column as the report uses it: for one key, if the declaration is a family."""

    name: str
    label: str
    table: str
    spread: str | None
    unit: str
    evaluator: str


@dataclass(frozen=True)
class Wording:
    """How the report names what was analysed: the paper's words (BN, ReLU) where every analysed
    layer is a BatchNorm whose disabled features are measured for a ReLU, general ones otherwise."""

    norms: str                      # "BNs" or "norms" (bnonly.analysis.norms_word)
    relu_bns: bool                  # the paper's case
    criteria: dict[str, str]        # activation -> its criterion, for the activations the analysed layers feed
    show_normalizer: bool           # the runs differ in normalizer: tables get a column for it

    @property
    def word(self) -> str:
        return "BN" if self.norms == "BNs" else "norm"

    @classmethod
    def of(cls, df, analyses: dict[str, dict]) -> Wording:
        norms = an.norms_word(k for n in df.loc[df["analyzed"], "normalizer"] for k in n.split("+"))
        criteria, measured_all = {}, True
        for a in analyses.values():
            dis = a["sections"].get("disabled") or {}
            # Version-1 sections analysed BatchNorms only, each for a ReLU.
            criteria.update(dis.get("criteria", {"relu": an.ACTIVATIONS["relu"].criterion}))
            measured_all &= dis.get("n_measured", dis.get("n_features")) == dis.get("n_features")
        return cls(norms, norms == "BNs" and set(criteria) <= {"relu"} and measured_all, criteria,
                   df["normalizer"].nunique() > 1)


def report_columns(analyses: list[dict], norms: str = "BNs") -> list[ReportColumn]:
    """The columns the registered evaluators declare, over the keys the ``analyses`` hold, in
    declaration order; consecutive family columns of one evaluator are laid out key by key.
    ``{norms}`` in a label reads ``norms`` (:func:`bnonly.analysis.norms_word`)."""
    out = []
    for entry in an.EVALUATORS.entries():
        sections = [a["sections"][entry.name] for a in analyses if entry.name in a["sections"]]
        if not sections:
            continue
        for family, group in itertools.groupby(entry.obj.columns, key=lambda c: c.family):
            group = list(group)
            if not family:
                out += [ReportColumn(c.name, c.label.replace("{norms}", norms), c.table, c.spread, c.unit,
                                     entry.name) for c in group]
                continue
            keys = list(dict.fromkeys(k for c in group for s in sections for k in (c.get(s) or {})))
            if group[0].key_order is not None:
                keys.sort(key=group[0].key_order)
            out += [ReportColumn(c.name.replace("{key}", k),
                                 c.label.replace("{key}", c.key_label(k)).replace("{norms}", norms), c.table,
                                 c.spread and c.spread.replace("{key}", k), c.unit, entry.name)
                    for k in keys for c in group]
    return out


def _number(v) -> float:
    """Sort key of a depth or width that may be missing (None or NaN sort first)."""
    return -1.0 if v is None or v != v else float(v)


def aggregate(df, columns: list[ReportColumn]):
    """Model x what-trains x variant: mean and std (over seeds) of every number of a run: accuracy,
    wall time and the evaluators' ``columns``; and, for an evaluator that does not apply to the
    model, why (``<evaluator>_not_applicable``, where it does not apply to any analysed run).
    Ordered by family, normalizer, width, depth, what trains and variant (the recipe's first)."""
    import pandas as pd

    value_cols = ["test_acc", "test_top5", "wall_seconds"] + [c.name for c in columns]
    reasons = [c for c in df.columns if c in {an.not_applicable_column(e) for e in an.EVALUATORS}]
    groups = []
    for (model, train, variant), g in df.groupby(["model", "train", "variant"], sort=False):
        first = g.iloc[0]
        row = dict(model=model, train=train, variant=variant, family=first["family"], depth=first["depth"],
                   width=first["width"], normalizer=first["normalizer"], n=len(g),
                   seeds=",".join(str(s) for s in sorted(g["seed"])), n_analyzed=int(g["analyzed"].sum()),
                   trainable_params=int(first["trainable_params"]), total_params=int(first["total_params"]),
                   epochs=first["epochs"], schedule_epochs=first["schedule_epochs"], bn_train=first["bn_train"],
                   bn_eval=first["bn_eval"], off_recipe=first["off_recipe"])
        for c in value_cols:
            values = g[c].dropna().astype(float)
            row[f"{c}_mean"] = values.mean() if len(values) else math.nan
            row[f"{c}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        analysed = g[g["analyzed"]]
        for c in reasons:
            row[c] = analysed[c].iloc[0] if len(analysed) and analysed[c].notna().all() else None
        groups.append(row)
    out = pd.DataFrame(groups)
    out["_order"] = [(str(f), str(n), _number(w), _number(d), _spec_key(t), v != "recipe", v)
                     for f, n, w, d, t, v in zip(out["family"], out["normalizer"], out["width"], out["depth"],
                                                 out["train"], out["variant"])]
    return out.sort_values("_order").drop(columns="_order").reset_index(drop=True)


# --- figures ---------------------------------------------------------------------------------

def _label(train: str, variant: str, sep: str = " ") -> str:
    return f"{train}{sep}[{variant}]" if variant else train


def _spec_of(label: str) -> str:
    """The what-trains spec of a :func:`_label`."""
    return label.split(" [")[0]


def _colors(groups) -> dict[str, str]:
    """One colour per what-trains spec (x variant), the same in every figure."""
    labels = sorted({_label(t, v) for t, v in zip(groups["train"], groups["variant"])},
                    key=lambda s: _spec_key(_spec_of(s)) + (s,))
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


#: Marker per kind of published source: a star for the paper's own text, hollow markers for the rest.
_SOURCE_MARKERS = {"[paper]": dict(marker="*", ms=15), "[paper v1 figure]": dict(marker="s"),
                   "[port]": dict(marker="D"), "[third-party]": dict(marker="^")}


def _paper_style(source: str) -> dict:
    """A published number's marker, by source, so that the figure and the port tell apart at a glance."""
    style = _SOURCE_MARKERS.get(source, dict(marker="v"))
    return style if source == "[paper]" else dict(ms=6, mfc="none", mew=1.5, **style)


def _spec_color(colors: dict[str, str], train: str) -> str:
    """The colour of this study's line for spec ``train`` (its first variant's), so that a published
    series sits in the colour of the runs it compares with; grey for a spec not run here."""
    return next((c for label, c in colors.items() if _spec_of(label) == train), "0.35")


def _draw_paper(ax, points, colors):
    """Published numbers as reference points, one dotted line per (source, series), labelled as such."""
    series: dict[tuple, list] = {}
    for x, p in points:
        series.setdefault((p.source, p.series, p.train), []).append((x, p.value))
    for (source, name, train), xy in sorted(series.items()):
        xy.sort()
        ax.plot([x for x, _ in xy], [100 * y for _, y in xy], ls=":" if len(xy) > 1 else "none",
                color=_spec_color(colors, train), label=f"{source} {name} (published, CIFAR-10)",
                **_paper_style(source))


def _draw_groups(ax, groups, x_col: str, colors, lines: bool = True):
    """This study's groups: mean ± std over seeds, one line (or marker set) per what-trains spec."""
    for (train, variant), g in groups.groupby(["train", "variant"], sort=False):
        g = g.sort_values(x_col)
        label = _label(train, variant)
        ax.errorbar(g[x_col], 100 * g["test_acc_mean"], yerr=100 * g["test_acc_std"].fillna(0), marker="o",
                    ms=7, capsize=4, lw=2, ls="-" if lines else "none", color=colors[label],
                    label=f"{label} (this study)")


def _finish(ax, xlabel: str, title: str, legend_cols: int = 1):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=legend_cols)


def _set_int_ticks(ax, values):
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _has_paper_depths(family: str, normalizer: str, width) -> bool:
    """PAPER.md's CIFAR-10 numbers are for CIFAR ResNets with BatchNorm of the default width."""
    return family == "cifar_resnet" and normalizer == "BatchNorm" and width == cifar_resnet.DEFAULT_WIDTH


def _with_normalizer(title: str, normalizer: str) -> str:
    """A panel title, naming the normalizer where it is not the paper's BatchNorm."""
    return title if normalizer == "BatchNorm" else f"{title}, normalizer {normalizer}"


def fig_accuracy_vs_depth(plt, groups, colors, path: Path) -> Path | None:
    """One panel per (family, normalizer, width) with at least two depths, or with published numbers to compare."""
    panels = [(k, g) for k, g in groups.groupby(["family", "normalizer", "width"], sort=True)
              if g["depth"].nunique() > 1 or _has_paper_depths(*k)]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.8 * len(panels)), squeeze=False)
    for ax, ((family, normalizer, width), g) in zip(axes[:, 0], panels):
        _draw_groups(ax, g, "depth", colors)
        depths = list(g["depth"])
        if _has_paper_depths(family, normalizer, width):
            # The published width series sit at depth 14 but at other widths: not on this panel.
            shapes = [(model_shape(p.model), p) for p in paper.numbers("top1", "CIFAR-10") if p.model]
            points = [(depth, p) for (_, depth, w), p in shapes if w == width]
            _draw_paper(ax, points, colors)
            depths += [x for x, _ in points]
        ax.set_xscale("log")
        _set_int_ticks(ax, depths)
        _finish(ax, "depth (layers, log scale)",
                _with_normalizer(f"Accuracy against depth: {family}, width {width}", normalizer))
    return _save(plt, fig, path)


def fig_accuracy_vs_width(plt, groups, colors, path: Path) -> Path | None:
    """One panel per (family, normalizer, depth) with at least two widths."""
    panels = [(k, g) for k, g in groups.groupby(["family", "normalizer", "depth"], sort=True)
              if g["width"].nunique() > 1]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4.5 * len(panels)), squeeze=False)
    for ax, ((family, normalizer, depth), g) in zip(axes[:, 0], panels):
        _draw_groups(ax, g, "width", colors)
        ax.set_xscale("log", base=2)
        _set_int_ticks(ax, g["width"])
        _finish(ax, "width W (channels of the first stage, log scale)",
                _with_normalizer(f"Accuracy against width: {family}, depth {depth}", normalizer))
    return _save(plt, fig, path)


def fig_accuracy_vs_params(plt, groups, colors, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 5))
    _draw_groups(ax, groups, "trainable_params", colors, lines=False)
    points = [(paper.trainable_params(p), p) for p in paper.numbers("top1", "CIFAR-10") if paper.trainable_params(p)]
    _draw_paper(ax, points, colors)
    ax.set_xscale("log")
    _finish(ax, "trainable parameters (count, log scale)", "Accuracy against the number of trainable parameters")
    return _save(plt, fig, path)


def _pooled(analyses: list[dict], key: str) -> np.ndarray:
    return np.concatenate([an.channels(a["sections"]["affine"], key) for a in analyses]) if analyses else np.zeros(0)


def fig_gamma_histograms(plt, df, analyses, colors, path: Path, norms: str = "BNs", max_panels: int = 4) -> Path | None:
    """Per model: the γ of every spec that trains γ, pooled over seeds, and the initial γ."""
    panels = []
    for model, g in df[df["analyzed"]].groupby("model", sort=False):
        trained = {}
        for (train, variant), gs in g.groupby(["train", "variant"], sort=False):
            runs = [analyses[r] for r in gs["run"]]
            affines = [a["sections"]["affine"] for a in runs]
            if any(np.any(an.channels(s, "gamma") != an.channels(s, "init_gamma")) for s in affines
                   if s["layers"] and "init_gamma" in s["layers"][0]["channels"]):
                trained[_label(train, variant)] = runs
        if trained:
            panels.append((model, trained))
    if not panels:
        return None
    panels.sort(key=lambda p: (-len(p[1]), p[0]))
    panels = panels[:max_panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4 * len(panels)), squeeze=False)
    for ax, (model, trained) in zip(axes[:, 0], panels):
        values = {label: _pooled(runs, "gamma") for label, runs in trained.items()}
        init = _pooled(next(iter(trained.values()))[:1], "init_gamma")
        lo = min(v.min() for v in values.values())
        hi = max(v.max() for v in values.values())
        bins = np.linspace(min(lo, 0), max(hi, 1), 61)
        ax.hist(init, bins=bins, weights=np.full(len(init), 100 / len(init)), histtype="stepfilled", color="0.85",
                label="initialization (one run)")
        for label, v in sorted(values.items(), key=lambda kv: _spec_key(kv[0].split(" [")[0])):
            ax.hist(v, bins=bins, weights=np.full(len(v), 100 / len(v)), histtype="step", lw=2, color=colors[label],
                    label=f"{label} ({len(trained[label])} run(s), {len(v)} features)")
        ax.set_yscale("log")
        ax.set(xlabel=f"γ ({'BatchNorm' if norms == 'BNs' else 'normalization'} scale, unitless)",
               ylabel="share of the spec's features (%, log scale)",
               title=f"Learned γ, {model}: specs that train γ")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def _group_label(row) -> str:
    """A bar group's tick label: model, spec and variant on lines of their own (on one line, a
    variant such as ``[precision=float32]`` runs into the next group's label)."""
    return row["model"] + "\n" + _label(row["train"], row["variant"], sep="\n")


def fig_disabled(plt, groups, thresholds: list[str], dead_shares, path: Path, relu_bns: bool = True) -> Path | None:
    """Small-γ and disabled fractions per group; ``relu_bns``: every analysed layer is a BatchNorm
    whose disabled features are measured for a ReLU (the paper's case, and its wording)."""
    g = groups[groups["n_analyzed"] > 0]
    if g.empty:
        return None
    x = np.arange(len(g))
    shares = " / ".join(f"{100 * s:g}%" for s in sorted(set(dead_shares)))
    blues = plt.get_cmap("Blues")
    bars = [(f"|γ| < {t}", f"gamma_below_{t}", blues(0.35 + 0.55 * i / max(1, len(thresholds) - 1)))
            for i, t in enumerate(thresholds)] + [(
        f"disabled (ReLU output zero for ≥ {shares} of test inputs)" if relu_bns else
        f"disabled (activation output ≈ 0 for ≥ {shares} of test inputs, among the measured features)",
        "fraction_dead", "k")]
    if "fraction_dead_relu_fed_mean" in g and g["fraction_dead_relu_fed_mean"].notna().any():
        bars.append(("disabled, among the features of BNs that feed a ReLU" if relu_bns else
                     "disabled, among the features of layers that feed a ReLU-like activation",
                     "fraction_dead_relu_fed", "C1"))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * len(g) + 2), 5.5))
    several_seeds = bool((g["n_analyzed"] > 1).any())
    for i, (label, col, color) in enumerate(bars):
        ax.bar(x + i * width, 100 * g[f"{col}_mean"], width, color=color, label=label,
               **(dict(yerr=100 * g[f"{col}_std"], capsize=3) if several_seeds else {}))
    claim = paper.numbers("fraction_disabled")[0]
    ax.axhline(100 * claim.value, color="C3", ls="--", lw=1.5,
               label=f"{claim.source} BN-only disables 'around a third'")
    ax.set_xticks(x + 0.4 - width / 2, [_group_label(r) for _, r in g.iterrows()], fontsize=8)
    highest = max(100 * (g[f"{col}_mean"] + g[f"{col}_std"].fillna(0)).max() for _, col, _ in bars)
    ax.set(ylabel="BN features (%)" if relu_bns else "features (%)", ylim=(0, min(100, max(40, 1.15 * highest))),
           title="Small γ and disabled features (mean ± std over seeds)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return _save(plt, fig, path)


def fig_ablation(plt, groups, path: Path, word: str = "BN") -> Path | None:
    g = groups[groups["n_analyzed"] > 0]
    if g.empty:
        return None
    x = np.arange(len(g))
    width = 0.27
    fig, ax = plt.subplots(figsize=(max(8, 1.5 * len(g) + 2), 5.5))
    ax.bar(x, 100 * g["ablation_baseline_acc_mean"], width, color="C0", label="nothing zeroed")
    ax.bar(x + width, 100 * g["ablation_disabled_zeroed_acc_mean"], width, color="C3", label="disabled features zeroed")
    ax.bar(x + 2 * width, 100 * g["ablation_random_zeroed_acc_mean_mean"], width,
           yerr=100 * g["ablation_random_zeroed_acc_std_mean"], capsize=3, color="C7",
           label="as many random features zeroed (error bar: std over draws)")
    zeroed = ["n/a" if n != n else f"{n:.0f} zeroed" for n in g["ablation_n_zeroed_mean"]]
    ax.set_xticks(x + width, [f"{_group_label(r)}\n{z}" for (_, r), z in zip(g.iterrows(), zeroed)], fontsize=8)
    ax.set(ylabel="test accuracy (%)", ylim=(0, 100), title=f"Ablation: zeroing disabled vs random {word} features "
                                                            "(mean over seeds)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- Markdown --------------------------------------------------------------------------------

def _pct(mean, std=math.nan, digits=1) -> str:
    if mean is None or mean != mean:
        return "–"
    text = f"{100 * mean:.{digits}f}"
    return text + (f" ± {100 * std:.{digits}f}" if std == std else "")


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(str(h).replace("|", "\\|") for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _setup_lines(configs: list[dict]) -> list[str]:
    """The recipe the runs share, with the schedule in plain words."""
    lines = []
    for k in _SETUP_FIELDS:
        values = sorted({json.dumps(c.get(k)) for c in configs})
        lines.append(f"- `{k}`: " + " / ".join(f"`{_fmt_value(json.loads(v))}`" for v in values))
    for epochs, sched, milestones in sorted({(c["epochs"], c["schedule_epochs"], tuple(c["milestones"]))
                                             for c in configs}):
        scaled = ", ".join(f"{m * epochs / sched:g}" for m in milestones)
        if epochs < sched:
            lines.append(f"- **The schedule is shortened**: {epochs:g} epochs instead of the recipe's {sched:g}, "
                         f"same shape (lr ×{configs[0]['lr_gamma']:g} at epochs {scaled}, i.e. the recipe's "
                         f"{', '.join(f'{m:g}' for m in milestones)} scaled by {epochs:g}/{sched:g}).")
        else:
            lines.append(f"- Schedule: {epochs:g} epochs, lr steps at epochs {scaled}.")
    return lines


def _paper_spec(group) -> str:
    """The paper's name for a group's spec: on a model whose only normalizer is BatchNorm, `norm`
    trains exactly what `bn` does."""
    return "bn" if group["train"] == "norm" and group["normalizer"] == "BatchNorm" else group["train"]


def _per_model(by: dict, train: str, column: str, evaluator: str) -> str:
    """"model: mean ± std%" of ``column`` for every analysed model of spec ``train`` in ``by``
    ((model, spec) -> group), "n/a" where ``evaluator`` does not apply; "" if none has it."""
    return "; ".join(f"{m}: n/a" if _not_applicable(r, evaluator) else
                     f"{m}: {_pct(r[f'{column}_mean'], r[f'{column}_std'])}%"
                     for (m, t), r in by.items() if t == train and r["n_analyzed"] and f"{column}_mean" in r)


def _paper_rows(groups) -> list[list]:
    """Each published number next to this study's closest measurement, if any."""
    rows = []
    by = {}
    for _, r in groups.iterrows():
        key = (r["model"], _paper_spec(r))
        if not r["off_recipe"] and (key not in by or r["train"] == key[1]):  # `bn` wins over `norm`
            by[key] = r
    for p in paper.PAPER_NUMBERS:
        value = ("~" if p.approximate else "") + f"{100 * p.value:.1f}%" + (" top-5" if p.metric == "top5" else "")
        here = "not run here"
        if p.metric == "top1" and (p.model, p.train) in by:
            r = by[(p.model, p.train)]
            variant = f", {r['variant']}" if r["variant"] not in ("", "recipe") else ""
            here = f"{_pct(r['test_acc_mean'], r['test_acc_std'])}% ({r['n']} seed(s), {r['epochs']:g} epochs{variant})"
        elif p.metric == "fraction_disabled":
            here = _per_model(by, p.train, "fraction_dead", "disabled") or here
        elif p.metric.startswith("fraction_gamma_below_"):  # "model not stated": every analysed depth
            column = "gamma_below_" + p.metric.removeprefix("fraction_gamma_below_")
            here = _per_model(by, p.train, column, "affine") or here
        rows.append([p.claim, value, f"{p.source} {p.where}", here])
    for claim, value, source in paper.CLAIMS:
        here = "not measured here"
        if claim.startswith("BN-only vs the same number"):
            found = []
            for (m, t), r in by.items():
                randoms = [(t2, r2) for (m2, t2), r2 in by.items() if m2 == m and t2.startswith("random")]
                if t == "bn" and randoms:
                    found.append(f"{m}: bn {_pct(r['test_acc_mean'])}% vs "
                                 + ", ".join(f"{t2} {_pct(r2['test_acc_mean'])}%" for t2, r2 in randoms))
            here = "; ".join(found) or here
        rows.append([claim, value, source, here])
    return rows


#: Published per-configuration numbers shown side by side with bnonly's at the paper's schedule.
_SIDE_BY_SIDE = ("[paper v1 figure]", "[port]")
#: Known copies of the data, and how they differ from the paper's original CIFAR-10 images.
_KNOWN_DATA = {"cifar10-jpeg": "the shared copy of the full CIFAR-10 (50,000 train / 10,000 test images) stored as "
                               "JPEG at quality 75, about 30.5 dB PSNR against the originals (PAPER.md's data note); "
                               "the paper and the port trained on the original images"}


def _at_paper_schedule(groups) -> list[tuple]:
    """(group, {source: PaperNumber}) for each group trained for the recipe's whole 160 epochs
    (the paper's CIFAR-10 schedule: TrainConfig's defaults) that the paper's v1 figure or the
    faithful port has a number for."""
    full = cfgmod.FIELD_DEFAULTS["epochs"], cfgmod.FIELD_DEFAULTS["schedule_epochs"]
    out = []
    for _, r in groups.iterrows():
        published = {p.source: p for p in paper.for_model(r["model"], _paper_spec(r)) if p.source in _SIDE_BY_SIDE}
        if published and (r["epochs"], r["schedule_epochs"]) == full and not r["off_recipe"]:
            out.append((r, published))
    return out


def _gap(mean, published) -> str:
    return "—" if published is None or mean != mean else f"{100 * (mean - published):+.1f}"


def _side_by_side(groups, configs: list[dict], wording: Wording) -> list[str]:
    """At the paper's schedule: bnonly's accuracy next to the paper's (v1 figure) and the port's,
    the disabled fractions against "around a third", the ablation, and what differs from the paper.
    Nothing for runs on a shortened schedule (no published number is for one)."""
    found = _at_paper_schedule(groups)
    if not found:
        return []
    md = ["## At the paper's schedule: bnonly, the paper and the port side by side", "",
          f"Configurations trained for the paper's whole {cfgmod.FIELD_DEFAULTS['epochs']:g}-epoch schedule that "
          "PAPER.md has a per-configuration number for. Top-1 test accuracy in %; bnonly: mean ± std over seeds "
          "(one seed: no std); gap = bnonly's mean minus the published number, in points. "
          f"[paper v1 figure]: {paper.SOURCES['[paper v1 figure]']} (≈, approximate). "
          f"[port]: {paper.SOURCES['[port]']}.", ""]
    rows = []
    for r, published in found:
        v1, port = published.get("[paper v1 figure]"), published.get("[port]")
        rows.append([r["model"], f"`{_label(r['train'], r['variant'])}`", r["seeds"],
                     _pct(r["test_acc_mean"], r["test_acc_std"]),
                     f"≈{100 * v1.value:.1f}" if v1 else "—", _gap(r["test_acc_mean"], v1 and v1.value),
                     f"{100 * port.value:.1f}" if port else "—", _gap(r["test_acc_mean"], port and port.value)])
    md += [_table(["model", "what trains", "seeds", "bnonly top-1 (%)", "[paper v1 figure] (%)", "gap",
                   "[port] (%)", "gap"], rows), ""]
    claim = paper.numbers("fraction_disabled")[0]
    analysed = [r for r, _ in found if r["n_analyzed"]]
    if analysed:
        third = f"≈{100 * claim.value:.0f}%"
        md += [f"Disabled features against {claim.source} {claim.where}, which states no criterion, and the "
               f"ablation. Disabled: in % of all {wording.norms} and of the ReLU-fed ones "
               "(see *What BatchNorm learned* for the criterion), mean ± std over seeds; gap in points to "
               f"{third}. Ablation: test accuracy (%) with nothing zeroed, with the disabled features zeroed "
               f"(all {wording.norms}; then only the ReLU-fed and only the residual-side ones), and with as many "
               "random features zeroed (mean ± std over draws, averaged over seeds).", ""]
        rows = [[r["model"], f"`{_label(r['train'], r['variant'])}`", r["n_analyzed"],
                 _pct(r["fraction_dead_mean"], r["fraction_dead_std"]), _gap(r["fraction_dead_mean"], claim.value),
                 _pct(r.get("fraction_dead_relu_fed_mean"), r.get("fraction_dead_relu_fed_std")),
                 _gap(r.get("fraction_dead_relu_fed_mean", math.nan), claim.value),
                 _pct(r["ablation_baseline_acc_mean"]), _pct(r["ablation_disabled_zeroed_acc_mean"]),
                 _pct(r.get("ablation_relu_fed_disabled_zeroed_acc_mean")),
                 _pct(r.get("ablation_other_disabled_zeroed_acc_mean")),
                 _pct(r["ablation_random_zeroed_acc_mean_mean"], r["ablation_random_zeroed_acc_std_mean"])]
                for r in analysed]
        md += [_table(["model", "what trains", "runs", f"disabled, all {wording.norms}", f"gap to {third}",
                       f"disabled, ReLU-fed {wording.norms}", f"gap to {third}", "acc", "disabled zeroed",
                       "ReLU-fed disabled zeroed", "residual-side disabled zeroed", "as many random zeroed"], rows), ""]
    md += ["What differs from the paper:", ""]
    for data in sorted({c["data"] for c in configs if c["epochs"] == cfgmod.FIELD_DEFAULTS["epochs"]}):
        md.append(f"- **Data**: `{data}`: " + _KNOWN_DATA.get(Path(data).name, "the paper and the port trained on "
                                                                          "the original CIFAR-10 images") + ".")
    seeds = sorted({r["seeds"] for r, _ in found})
    md += [f"- **Seeds**: bnonly ran seed(s) {' / '.join(seeds)} per configuration (std over seeds where there are "
           "several); the port's numbers are single runs, and the v1 figure does not say how many runs each point "
           "averages.",
           "- **The paper's numbers are read off a figure**: the first version's (arXiv v1, Feb 2020, whose abstract "
           "says 83% for ResNet-866; the final version says 82%), about ±1 point; the final version's per-depth "
           "numbers could not be read. The port's are printed numbers."]
    if any((r["bn_train"], r["bn_eval"]) != tuple(an.PRE_RECORD_BN_STATISTICS.values()) for r, _ in found):
        md.append("- **BatchNorm statistics**: some runs here did not train with batch statistics and evaluate with "
                  "the running averages, as the paper did: see the *BN statistics* column above.")
    return md + [""]


def _left_out(groups) -> str:
    """The sentence saying which configurations the published comparison leaves out, and why."""
    changed = sorted({f for fs in groups["off_recipe"] for f in fs.split(",") if f})
    if not changed:
        return ""
    n = int((groups["off_recipe"] != "").sum())
    return (f" {n} configuration(s) here leave the paper's recipe in more than the data and the schedule's length "
            f"({', '.join(f'`{f}`' for f in changed)}): a different experiment, left out of this table.")


def render_markdown(*, title: str, root: Path, df, groups, figures: dict, configs: list[dict], pending: list[dict],
                    note: str | None, command: str | None, columns: list[ReportColumn], wording: Wording) -> str:
    md = [f"# {title}", ""]
    if note:
        md += [note.strip(), ""]
    md += ["## Runs", "",
           f"{len(df)} finished run(s) gathered from `{root}`; together they trained for "
           f"{_duration(df['wall_seconds'].sum())} "
           f"(sum of each run's wall time, device(s): {', '.join(sorted(set(map(str, df['device']))))}).", ""]
    if pending:
        md += [f"**Not finished yet: {len(pending)} run(s).** The tables and figures below lack them.", ""]
        md += [f"- `{p['model']}` `{p['train']}`" + (f" [{p['off_recipe']}]" if p["off_recipe"] else "")
               + f" seed {p['seed']}: {p['status']}" for p in pending] + [""]
    md += ["Recipe of the runs gathered:", ""] + _setup_lines(configs) + [""]
    if command:
        md += ["Produced by:", "", "```", command, "```", ""]

    md += ["## Accuracy per model × what trains", "",
           "Test accuracy in %, mean ± std over seeds (std with one seed: none).", ""]
    has_variant = bool(groups["variant"].str.len().max())
    # Columns shown only where the runs differ in them (one normalizer, one kind of BN statistics: neither).
    show_normalizer = wording.show_normalizer
    bn_statistics = groups["bn_train"] + " / " + groups["bn_eval"]
    show_bn = bn_statistics.nunique() > 1
    headers = ["model"] + (["normalizer"] if show_normalizer else []) + ["what trains"] + (
        ["variant"] if has_variant else []) + (["BN statistics (train / eval)"] if show_bn else []) + [
        "seeds", "top-1 (%)", "top-5 (%)", "trainable params", "of all params"]
    rows = []
    for (_, r), stats in zip(groups.iterrows(), bn_statistics):
        rows.append([r["model"]] + ([r["normalizer"]] if show_normalizer else []) + [f"`{r['train']}`"] + (
            [r["variant"]] if has_variant else []) + ([stats] if show_bn else []) + [
            r["seeds"], _pct(r["test_acc_mean"], r["test_acc_std"]), _pct(r["test_top5_mean"], r["test_top5_std"]),
            f"{r['trainable_params']:,}", f"{100 * r['trainable_params'] / r['total_params']:.2f}%"])
    md += [_table(headers, rows), ""]
    md += _side_by_side(groups, configs, wording)

    md += ["## Against the published numbers", "",
           "Published numbers are for full-length training (the paper's framework: 160 epochs) on the original "
           "CIFAR-10 images; " + "; ".join(f"{mark} = {text}" for mark, text in paper.SOURCES.items())
           + " (as PAPER.md marks them)." + _left_out(groups), "",
           _table(["claim", "published", "source", "this study"], _paper_rows(groups)), ""]

    md += ["## Accuracy against depth, width and trainable parameters", ""]
    md += _figure(figures, "depth", "Accuracy against depth. Lines with circles: this study (mean ± std over seeds). "
                  "Star: the paper's own number; hollow squares and diamonds: third-party numbers. "
                  "Published numbers are reference points only (full-length training, original images).",
                  "No depth sweep among these runs (each model family and width has a single depth), and no "
                  "published numbers for their family and width.")
    md += _figure(figures, "width", "Accuracy against width (PAPER.md's headline table has no width numbers to draw).",
                  "No width sweep among these runs (each model family and depth has a single width).")
    md += _figure(figures, "params", "Accuracy against the number of trainable parameters (log scale); published "
                  "numbers placed at PAPER.md's parameter counts.", "")

    md += ["## What BatchNorm learned" if wording.norms == "BNs" else "## What the normalization layers learned", ""]
    analyzed = groups[groups["n_analyzed"] > 0]
    if analyzed.empty:
        md += ["No run has an analysis.json yet: run `bnonly analyze RUNS_DIR` (or `bnonly report --analyze`).", ""]
    else:
        share = " / ".join(f"{100 * s:g}%" for s in sorted(set(df["dead_share"].dropna())))
        if wording.relu_bns:
            md += [f"A feature (one BN channel) is *disabled* when ReLU(BN output) is zero everywhere for at least "
                   f"{share} of test inputs (see docs/analysis-reports.md). "
                   f"Fractions in % of all BN features, mean ± std over seeds.", ""]
        else:
            md += [f"A feature (one channel of a normalization layer; one hidden unit of a LayerNorm or RMSNorm over "
                   f"features) is *disabled* when it is off for at least {share} of test inputs: its output is at "
                   f"most the threshold of the ReLU-like activation it feeds at every position of the input (every "
                   f"pixel; every token of a sequence). The criterion for each activation the analysed layers feed:",
                   ""] + [f"- {criterion}." for criterion in wording.criteria.values()] + [
                   "", "Where a layer's output reaches no ReLU-like activation, directly or through a residual sum "
                   "(a ViT's pre-norm LayerNorm feeds attention and linear layers), disabled features are not "
                   "measured: **n/a** below, with the reason in analysis.json; fractions are in % of the measured "
                   "features, mean ± std over seeds.", ""]
        md += _columns_table(analyzed, columns, "learned", runs=True, normalizer=wording.show_normalizer)
        md += [f"Ablation columns: test accuracy (%) with nothing zeroed, with the disabled features' {wording.word} "
               f"outputs zeroed, and with as many randomly chosen {wording.word} features zeroed (mean ± std over "
               "the random draws, averaged over seeds).", ""]
        split = _columns_table(analyzed, columns, "by_destination", normalizer=wording.show_normalizer)
        if split and wording.relu_bns:
            md += ["The same, split by where each BN's output goes. A *ReLU-fed* BN's output goes only into a ReLU "
                   "(found by tracing the model), so its disabled features are zero after the ReLU already; the "
                   "*other* BNs (in a ResNet: each block's second BN and its shortcut BN) feed the residual sum, "
                   "where zeroing a disabled feature removes a negative contribution. Random draws are taken within "
                   "the same kind of BN. Accuracies in %, averaged over seeds.", ""] + split
        elif split:
            md += ["The same, split by where each layer's output goes (found by tracing the model). A *ReLU-fed* "
                   "layer's output goes only into a ReLU-like activation, so its disabled features are (about) zero "
                   "after the activation already; the *other* layers (in a ResNet: each block's second norm and its "
                   "shortcut norm) reach it through the residual sum, where zeroing a disabled feature removes a "
                   "negative contribution. Random draws are taken within the same kind of layer. Accuracies in %, "
                   "averaged over seeds.", ""] + split
        md += _figure(figures, "gamma", "Learned γ (log-scale counts), pooled over seeds, for every spec that trains "
                      "γ, over the initial γ of one run.", "No analysed run trains γ.")
        md += _figure(figures, "disabled", "Small-γ and disabled fractions per model × what trains; the dashed line "
                      "is the paper's 'around a third' for BN-only.", "")
        md += _figure(figures, "ablation", "Ablation: accuracy after zeroing the disabled features vs as many random "
                      "ones.", "")
    not_analyzed = df[~df["analyzed"]]
    if len(not_analyzed):
        md += [f"Not analysed yet ({len(not_analyzed)}): " + ", ".join(f"`{r}`" for r in not_analyzed["run"]), ""]
    md += ["## Data files", "",
           "- `runs.csv`, `runs.jsonl`: one row per run (`pd.read_json('runs.jsonl', lines=True)`).",
           "- `groups.csv`: one row per model × what trains, `*_mean` / `*_std` over seeds.", ""]
    return "\n".join(md)


def _not_applicable(r, evaluator: str) -> bool:
    """Whether ``evaluator``'s analysis does not apply to group ``r``'s model (a reason is recorded)."""
    return isinstance(r.get(an.not_applicable_column(evaluator)), str)


def _cell(r, c: ReportColumn) -> str:
    """A group's value of column ``c``: its mean over seeds, with the spread ``c`` declares; "n/a"
    where ``c``'s evaluator does not apply to the model."""
    mean = r[f"{c.name}_mean"]
    if mean != mean and _not_applicable(r, c.evaluator):
        return "n/a"
    if c.unit == "count":
        return "–" if mean != mean else f"{mean:.0f}"
    spread = r[f"{c.name}_std"] if c.spread == "seeds" else math.nan if c.spread is None else r[f"{c.spread}_mean"]
    return _pct(mean, spread)


def _columns_table(analyzed, columns: list[ReportColumn], table: str, runs: bool = False,
                   normalizer: bool = False) -> list[str]:
    """The report.md table ``table``: one row per analysed group, one column per labelled column that
    names it (none if no group has a number in any of them); ``runs`` adds the analysed-run count,
    ``normalizer`` the normalizer column."""
    shown = [c for c in columns if c.label and c.table == table]
    if not any(analyzed[f"{c.name}_mean"].notna().any() for c in shown):
        return []
    headers = ["model"] + (["normalizer"] if normalizer else []) + ["what trains"] + (["runs"] if runs else []) + [
        c.label for c in shown]
    rows = [[r["model"]] + ([r["normalizer"]] if normalizer else []) + [f"`{_label(r['train'], r['variant'])}`"]
            + ([r["n_analyzed"]] if runs else []) + [_cell(r, c) for c in shown] for _, r in analyzed.iterrows()]
    return [_table(headers, rows), ""]


def _figure(figures: dict, key: str, caption: str, absent: str) -> list[str]:
    path = figures.get(key)
    if path is None:
        return [absent, ""] if absent else []
    return [f"![{caption}](figures/{path.name})", "", f"*{caption}*", ""]


# --- the whole report ------------------------------------------------------------------------

def make_report(root: str | Path, out: str | Path | None = None, *, title: str | None = None,
                note: str | Path | None = None, sweep: str | Path | None = None, analyze: bool = False,
                analyze_options: dict | None = None, command: str | None = None, log=print) -> Path:
    """Gather the finished runs below ``root`` and write the tables and report into ``out``."""
    pd = require("pandas", "bnonly report")
    require("matplotlib", "bnonly report's figures")

    root = Path(root)
    out = Path(out) if out is not None else root / "report"
    if not root.is_dir():
        raise ReportError(f"{root} is not a folder")
    if analyze:
        for path in an.finished_runs(root):
            if not (path / an.ANALYSIS_FILE).exists():
                log(f"analysing {path}")
                an.analyze_run(path, **(analyze_options or {}))
    rows, analyses, configs = collect(root)
    if not rows:
        raise ReportError(f"no finished runs below {root} (a finished run has summary.json with status 'done')")
    df = pd.DataFrame(rows)
    wording = Wording.of(df, analyses)
    columns = report_columns(list(analyses.values()), wording.norms)
    groups = aggregate(df, columns)

    pending = unfinished(root, sweep)

    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)
    df.to_json(out / "runs.jsonl", orient="records", lines=True)
    groups.to_csv(out / "groups.csv", index=False)

    thresholds = sorted({c[len("gamma_below_"):] for c in df.columns if c.startswith("gamma_below_")}, key=float)
    plt = an.pyplot()
    colors = _colors(groups)
    fig_dir = out / "figures"
    figures = {
        "depth": fig_accuracy_vs_depth(plt, groups, colors, fig_dir / "accuracy_vs_depth.png"),
        "width": fig_accuracy_vs_width(plt, groups, colors, fig_dir / "accuracy_vs_width.png"),
        "params": fig_accuracy_vs_params(plt, groups, colors, fig_dir / "accuracy_vs_params.png"),
        "gamma": fig_gamma_histograms(plt, df, analyses, colors, fig_dir / "gamma_histograms.png", wording.norms),
        "disabled": fig_disabled(plt, groups, thresholds, df.get("dead_share", pd.Series(dtype=float)).dropna(),
                                 fig_dir / "disabled_fractions.png", wording.relu_bns),
        "ablation": fig_ablation(plt, groups, fig_dir / "ablation.png", wording.word),
    }
    text = render_markdown(
        title=title or f"bnonly report: {root.name}", root=root, df=df, groups=groups, figures=figures,
        configs=configs, pending=pending, note=Path(note).read_text() if note else None,
        command=command, columns=columns, wording=wording)
    report = out / "report.md"
    report.write_text(text)
    return report


def cmd_report(args) -> int:
    options = dict(data=args.data, device=args.device, threads=args.threads)
    out = args.out or str(Path(args.runs_dir) / "report")
    command = " ".join(["bnonly report", shlex.quote(args.runs_dir), "--out", shlex.quote(out)]
                       + (["--title", shlex.quote(args.title)] if args.title else [])
                       + (["--note", shlex.quote(args.note)] if args.note else [])
                       + (["--sweep", shlex.quote(args.sweep)] if args.sweep else [])
                       + (["--analyze"] if args.analyze else []))
    report = make_report(args.runs_dir, out, title=args.title, note=args.note, sweep=args.sweep,
                         analyze=args.analyze, analyze_options=options, command=command)
    import pandas as pd

    for _, r in pd.read_csv(report.parent / "groups.csv", keep_default_na=False, na_values=[""]).iterrows():
        acc = _pct(r["test_acc_mean"], r["test_acc_std"])
        print(f"{r['model']:<22} {r['train']:<24} seeds {r['seeds']!s:<6} top-1 {acc}%")
    print(f"report: {report}")
    return 0


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="gather finished runs into tables and a Markdown report with figures",
        description="Finds every finished run below RUNS_DIR and writes runs.csv, runs.jsonl, groups.csv, "
                    "report.md and figures/ into --out.")
    p.add_argument("runs_dir", metavar="RUNS_DIR")
    p.add_argument("--out", default=None, help="output folder (default: RUNS_DIR/report)")
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--note", default=None, help="Markdown file placed under the title (context, discussion)")
    p.add_argument("--sweep", default=None, metavar="SPEC_FILE",
                   help="the sweep file the runs come from (bnonly sweep): its runs not finished are listed")
    p.add_argument("--analyze", action="store_true",
                   help="first run `bnonly analyze` (default options) on finished runs that lack analysis.json")
    p.add_argument("--data", default=None, help="with --analyze: dataset path, if it moved since training")
    p.add_argument("--device", default="cpu", help="with --analyze: device (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="with --analyze: CPU threads for torch")
    p.set_defaults(func=cmd_report)
