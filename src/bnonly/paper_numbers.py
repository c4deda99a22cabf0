"""The published numbers a reproduction is judged against, with their sources.

Transcribed from the headline table of ``paper/PAPER.md`` (Frankle, Schwab, Morcos, "Training
BatchNorm and Only BatchNorm", ICLR 2021, arXiv 2003.00152). ``source`` says where each number
comes from, as PAPER.md marks it: ``[paper]`` is the paper's own text, ``[third-party]`` others'
reproductions. Reports draw these as reference points and always label them with their source.
All accuracies are fractions in [0, 1] after the full recipe (160 epochs on CIFAR-10).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperNumber:
    claim: str
    dataset: str
    train: str                       # what-trains spec in bnonly's terms ("bn", "all")
    metric: str                      # "top1", "top5" or "fraction_disabled"
    value: float
    source: str                      # "[paper]" or "[third-party]"
    where: str                       # where in the source
    model: str | None = None         # bnonly model name, when the number is for one model
    approximate: bool = False        # the source gives "~x" or "around x"
    series: str = ""                 # numbers drawn as one line share (source, series)


_PORT = "unofficial port"

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
    PaperNumber(f"BN-only CIFAR-10 ResNet-{depth}, {_PORT}", "CIFAR-10", "bn", "top1", acc, "[third-party]", _PORT,
                model=f"cifar_resnet_{depth}", series=f"BN-only, {_PORT}")
    for depth, acc in ((14, 0.467), (32, 0.513), (56, 0.552), (110, 0.652), (218, 0.701), (434, 0.737), (866, 0.778))
)
"""Every number of the headline table that is a single value; the qualitative claims are in CLAIMS."""

CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("BN-only vs the same number of random parameters", "BN-only 'far higher'", "[paper] abstract"),
    ("γ, β present vs absent, full training", "+0.5 to 2 points CIFAR-10, +2 ImageNet", "[paper] intro, Figure 1"),
    ("deep beats wide at equal BN-parameter count", "accuracy rises faster with depth than width",
     "[third-party] summary"),
)
"""Claims of the headline table that are not single numbers: (claim, value, source)."""

PARAM_COUNTS: dict[str, dict[str, int]] = {
    "cifar_resnet_14": dict(all=175_258, bn=1_120),
    "cifar_resnet_20": dict(all=272_474, bn=1_568),
    "cifar_resnet_32": dict(all=466_906, bn=2_464),
    "cifar_resnet_56": dict(all=855_770, bn=4_256),
    "cifar_resnet_110": dict(all=1_730_714, bn=8_288),
    "cifar_resnet_218": dict(all=3_480_602, bn=16_352),
    "cifar_resnet_434": dict(all=6_980_378, bn=32_480),
    "cifar_resnet_866": dict(all=13_979_930, bn=64_736),
    "imagenet_resnet_50": dict(all=25_557_032, bn=53_120),
    "imagenet_resnet_200": dict(all=64_673_832, bn=176_000),
}
"""Trainable parameters (PAPER.md's architecture table): where paper points go on a parameter axis."""


def numbers(metric: str | None = None, dataset: str | None = None) -> list[PaperNumber]:
    """The published numbers, optionally only one metric and/or dataset."""
    return [p for p in PAPER_NUMBERS if (metric is None or p.metric == metric)
            and (dataset is None or p.dataset == dataset)]


def trainable_params(p: PaperNumber) -> int | None:
    """The trainable-parameter count a published accuracy was obtained with, if known."""
    return PARAM_COUNTS.get(p.model or "", {}).get(p.train)
