"""The published numbers a reproduction is judged against, with their sources.

Transcribed from ``paper/PAPER.md`` (Frankle, Schwab, Morcos, "Training BatchNorm and Only
BatchNorm", ICLR 2021, arXiv 2003.00152): its headline table and its per-depth and per-width
CIFAR-10 table. ``source`` is PAPER.md's own mark for where a number comes from (SOURCES says
what each mark means). Reports draw these as reference points and always label them with their
source. All accuracies are fractions in [0, 1] after the full recipe (160 epochs on CIFAR-10).

Two third-party BN-only series exist and disagree, so both are kept under different sources:

- ``[port]`` (series "BN-only"): PAPER.md's per-depth table, "a faithful third-party PyTorch port
  (same recipe, single 160-epoch runs, original CIFAR-10)": ResNet-14/32/56/110/218 = 46.9 / 56.9
  / 62.6 / 70.0 / 76.0, within 1 point of the paper's own v1 figure at every depth.
- ``[third-party]`` (series "BN-only, unofficial port"): the headline table's "unofficial port"
  row, 14 ... 866 = 46.7 / 51.3 / 55.2 / 65.2 / 70.1 / 73.7 / 77.8. PAPER.md states no recipe for
  it, and from ResNet-32 to -218 it lies 4.8 to 7.4 points below both the v1 figure and the
  faithful port.

A comparison should use ``[paper v1 figure]`` (the paper's own numbers, about ±1 point) and the
faithful ``[port]`` (a measured run of the same recipe); :func:`for_model` returns them first.
The unofficial port is the only per-run source for ResNet-434 and -866 besides the figure, and
is kept for completeness, not as the target.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperNumber:
    claim: str
    dataset: str
    train: str                       # what-trains spec in bnonly's terms ("bn", "all"); "bn+shortcut+output"
    #                                  has no bnonly spec (bnonly has no term for the 1x1 shortcut convs)
    metric: str                      # "top1", "top5", "fraction_disabled" or "fraction_gamma_below_0.01"
    value: float
    source: str                      # one of SOURCES
    where: str                       # where in the source
    model: str | None = None         # bnonly model name, when the number is for one model
    approximate: bool = False        # the source gives "~x", "≈x" or "around x", or reads it off a figure
    series: str = ""                 # numbers drawn as one line share (source, series)


SOURCES: dict[str, str] = {
    "[paper]": "the paper's own text (final version)",
    "[paper v1 figure]": "read off the figure of arXiv v1 (Feb 2020), about ±1 point",
    "[port]": "a faithful third-party PyTorch port: same recipe, single 160-epoch runs, original CIFAR-10",
    "[third-party]": "others' reproductions and summaries, recipe not stated in PAPER.md",
}
"""PAPER.md's source marks: every PaperNumber carries one of these."""

_PORT = "unofficial port"
_V1 = "arXiv v1 figure (read off the plot)"
_FAITHFUL = "faithful port, one 160-epoch run"
DEPTHS = (14, 32, 56, 110, 218, 434, 866)
WIDTHS = (32, 64, 128, 256, 512)

# PAPER.md "Per depth and width, CIFAR-10 top-1 (%)", columns as printed; None where it prints "—".
_DEPTH_TABLE: dict[int, tuple[float, float | None, float, float | None]] = {
    # depth: (BN-only v1 figure, BN-only port, all v1 figure, all port)
    14: (47.7, 46.9, 90.4, 89.9),
    32: (57.6, 56.9, 92.1, 91.9),
    56: (62.9, 62.6, 93.0, 91.9),
    110: (69.7, 70.0, 93.3, 92.2),
    218: (75.5, 76.0, 93.3, 91.2),
    434: (79.5, None, 92.8, None),
    866: (83.0, None, 92.7, None),
}
# Where a v1-figure entry is printed as more than one number.
_V1_AS_PRINTED = {("bn", "cifar_resnet_434"): "printed as ≈79–80, kept as the middle",
                  ("bn", "cifar_resnet_866"): "printed as ≈83; the final abstract says 82 (the [paper] number)"}
_WIDTH_TABLE: dict[int, tuple[float, float | None, float, float | None]] = {
    # ResNet-14 at width W: (BN-only v1 figure, BN-only port, all v1 figure, all port)
    32: (53.2, 53.1, 92.9, 91.8),
    64: (59.5, 58.0, 94.0, 93.3),
    128: (64.4, 64.9, 94.5, 94.3),
    256: (68.3, None, 94.7, None),
    512: (72.9, None, 94.7, None),
}


def _table_numbers(rows: dict, model_name, label, series_suffix: str = "") -> tuple[PaperNumber, ...]:
    """One table as PaperNumbers: v1-figure values approximate (read off a plot), port values as printed."""
    out = []
    for key, (bn_v1, bn_port, all_v1, all_port) in rows.items():
        for train, who, v1, port in (("bn", "BN-only", bn_v1, bn_port), ("all", "full training", all_v1, all_port)):
            model = model_name(key)
            common = dict(model=model, series=("BN-only" if train == "bn" else "all") + series_suffix)
            claim = f"{who} CIFAR-10 {label(key)}"
            where = _V1 + (f", {_V1_AS_PRINTED[train, model]}" if (train, model) in _V1_AS_PRINTED else "")
            out.append(PaperNumber(claim, "CIFAR-10", train, "top1", round(v1 / 100, 4), "[paper v1 figure]", where,
                                   approximate=True, **common))
            if port is not None:
                out.append(PaperNumber(claim, "CIFAR-10", train, "top1", round(port / 100, 4), "[port]", _FAITHFUL,
                                       **common))
    return tuple(out)


PAPER_NUMBERS: tuple[PaperNumber, ...] = (
    PaperNumber("deep ResNet, CIFAR-10, BN-only (ResNet-866)", "CIFAR-10", "bn", "top1", 0.82, "[paper]", "abstract",
                model="cifar_resnet_866", series="BN-only"),
    PaperNumber("deepest ResNet, ImageNet, BN-only (likely ResNet-200)", "ImageNet", "bn", "top5", 0.32, "[paper]",
                "abstract", model="imagenet_resnet_200", series="BN-only"),
    PaperNumber("features BN-only learns to disable", "CIFAR-10 and ImageNet", "bn", "fraction_disabled", 1 / 3,
                "[paper]", "abstract ('around a third')", approximate=True),
    PaperNumber("BN-only CIFAR-10 ResNet-14", "CIFAR-10", "bn", "top1", 0.48, "[third-party]",
                "PAPER.md headline table", model="cifar_resnet_14", approximate=True, series="BN-only"),
    PaperNumber("BN-only CIFAR-10 ResNet-110", "CIFAR-10", "bn", "top1", 0.695, "[third-party]",
                "PAPER.md headline table", model="cifar_resnet_110", approximate=True, series="BN-only"),
    PaperNumber("full training CIFAR-10 ResNet-14", "CIFAR-10", "all", "top1", 0.91, "[third-party]",
                "PAPER.md headline table", model="cifar_resnet_14", approximate=True, series="all"),
    PaperNumber("full training CIFAR-10 ResNet-110", "CIFAR-10", "all", "top1", 0.933, "[third-party]",
                "PAPER.md headline table", model="cifar_resnet_110", approximate=True, series="all"),
) + tuple(
    PaperNumber(f"BN-only CIFAR-10 ResNet-{depth}, {_PORT}", "CIFAR-10", "bn", "top1", acc, "[third-party]",
                f"PAPER.md headline table, {_PORT} (recipe not stated)", model=f"cifar_resnet_{depth}",
                series=f"BN-only, {_PORT}")
    for depth, acc in zip(DEPTHS, (0.467, 0.513, 0.552, 0.652, 0.701, 0.737, 0.778))
) + _table_numbers(_DEPTH_TABLE, lambda d: f"cifar_resnet_{d}", lambda d: f"ResNet-{d}") + _table_numbers(
    _WIDTH_TABLE, lambda w: f"cifar_resnet_14_{w}", lambda w: f"ResNet-14 width {w}", ", ResNet-14 by width"
) + (
    # The v1 figure's "BN + shortcut + output" series: PAPER.md gives only its two ends.
    PaperNumber("BN + shortcut + output CIFAR-10 ResNet-14", "CIFAR-10", "bn+shortcut+output", "top1", 0.632,
                "[paper v1 figure]", _V1 + ", first point of the series", model="cifar_resnet_14", approximate=True,
                series="BN + shortcut + output"),
    PaperNumber("BN + shortcut + output CIFAR-10 ResNet-866", "CIFAR-10", "bn+shortcut+output", "top1", 0.819,
                "[paper v1 figure]", _V1 + ", last point of the series", model="cifar_resnet_866", approximate=True,
                series="BN + shortcut + output"),
    PaperNumber("untrained network (random init), any depth", "CIFAR-10", "none", "top1", 0.10, "[paper v1 figure]",
                _V1 + " (chance for 10 classes)", approximate=True),
    # A summary of v1 gives these two without the model or dataset they were measured on.
    PaperNumber("BN features with |γ| < 0.01 after BN-only training", "not stated", "bn",
                "fraction_gamma_below_0.01", 0.27, "[third-party]", "summary of arXiv v1 (model not stated)"),
    PaperNumber("BN features with |γ| < 0.01 after full training", "not stated", "all",
                "fraction_gamma_below_0.01", 0.09, "[third-party]", "summary of arXiv v1 (model not stated)"),
)
"""Every single-valued number of PAPER.md; the qualitative claims are in CLAIMS. The [paper]
ResNet-866 number comes first: it is the study's headline."""

CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("BN-only vs the same number of random parameters", "BN-only 'far higher'", "[paper] abstract"),
    ("γ, β present vs absent, full training", "+0.5 to 2 points CIFAR-10, +2 ImageNet", "[paper] intro, Figure 1"),
    ("deep beats wide at equal BN-parameter count", "accuracy rises faster with depth than width",
     "[third-party] summary; [paper v1 figure]"),
)
"""Claims that are not single numbers: (claim, value, source)."""

PARAM_COUNTS: dict[str, dict[str, int]] = {
    "cifar_resnet_14": dict(all=175_258, bn=1_120),
    "cifar_resnet_20": dict(all=272_474, bn=1_568),
    "cifar_resnet_32": dict(all=466_906, bn=2_464),
    "cifar_resnet_56": dict(all=855_770, bn=4_256),
    "cifar_resnet_110": dict(all=1_730_714, bn=8_288),
    "cifar_resnet_218": dict(all=3_480_602, bn=16_352),
    "cifar_resnet_434": dict(all=6_980_378, bn=32_480),
    "cifar_resnet_866": dict(all=13_979_930, bn=64_736),
    "cifar_resnet_14_32": dict(all=696_618, bn=2_240),
    "cifar_resnet_14_64": dict(all=2_777_674, bn=4_480),
    "cifar_resnet_14_128": dict(all=11_093_130, bn=8_960),
    "cifar_resnet_14_256": dict(all=44_337_418, bn=17_920),
    "cifar_resnet_14_512": dict(all=177_279_498, bn=35_840),
    "imagenet_resnet_50": dict(all=25_557_032, bn=53_120),
    "imagenet_resnet_200": dict(all=64_673_832, bn=176_000),
}
"""Trainable parameters (PAPER.md's architecture table): where paper points go on a parameter axis."""

_PREFERENCE = ("[paper]", "[paper v1 figure]", "[port]", "[third-party]")


def numbers(metric: str | None = None, dataset: str | None = None) -> list[PaperNumber]:
    """The published numbers, optionally only one metric and/or dataset."""
    return [p for p in PAPER_NUMBERS if (metric is None or p.metric == metric)
            and (dataset is None or p.dataset == dataset)]


def for_model(model: str, train: str = "bn", metric: str = "top1") -> list[PaperNumber]:
    """The published numbers for one model and spec, the ones a comparison should use first:
    the paper's text, its v1 figure, the faithful port, then other third-party numbers."""
    found = [p for p in PAPER_NUMBERS if p.model == model and p.train == train and p.metric == metric]
    return sorted(found, key=lambda p: _PREFERENCE.index(p.source))


def trainable_params(p: PaperNumber) -> int | None:
    """The trainable-parameter count a published accuracy was obtained with, if known."""
    return PARAM_COUNTS.get(p.model or "", {}).get(p.train)
