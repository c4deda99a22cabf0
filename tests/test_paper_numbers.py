"""bnonly.paper_numbers against PAPER.md: each table row below is copied verbatim from it (and checked
to still be in it when ../shared/paper/PAPER.md is present), parsed, and compared number by number."""

import re
from pathlib import Path

import pytest

from bnonly import paper_numbers as paper
from bnonly.models import create_model
from bnonly.trainable import bn_param_count

PAPER_MD = Path(__file__).resolve().parents[2] / "shared" / "paper" / "PAPER.md"

# PAPER.md, "Per depth and width, CIFAR-10 top-1 (%)": model | BN-only [paper v1 figure] | BN-only [port] |
# all params [paper v1 figure] | all params [port].
DEPTH_ROWS = """\
| ResNet-14 | ≈47.7 | 46.9 | ≈90.4 | 89.9 |
| ResNet-32 | ≈57.6 | 56.9 | ≈92.1 | 91.9 |
| ResNet-56 | ≈62.9 | 62.6 | ≈93.0 | 91.9 |
| ResNet-110 | ≈69.7 | 70.0 | ≈93.3 | 92.2 |
| ResNet-218 | ≈75.5 | 76.0 | ≈93.3 | 91.2 |
| ResNet-434 | ≈79–80 | — | ≈92.8 | — |
| ResNet-866 | ≈83 (82 in the final abstract) | — | ≈92.7 | — |"""
WIDTH_ROW = ("| ResNet-14 width 32 / 64 / 128 / 256 / 512 | ≈53.2 / 59.5 / 64.4 / 68.3 / 72.9 "
             "| 53.1 / 58.0 / 64.9 / — / — | ≈92.9 / 94.0 / 94.5 / 94.7 / 94.7 "
             "| 91.8 / 93.3 / 94.3 / — / — |")
UNOFFICIAL_PORT_ROW = ("| BN-only CIFAR-10, unofficial port, 14/32/56/110/218/434/866 "
                       "| 46.7 / 51.3 / 55.2 / 65.2 / 70.1 / 73.7 / 77.8 | [third-party] |")
HEADLINE_ROWS = [
    "| deep ResNet, CIFAR-10, BN-only | 82% top-1 (ResNet-866) | [paper] abstract |",
    "| deep ResNet, ImageNet, BN-only | 32% top-5 (deepest ResNet, likely ResNet-200) | [paper] abstract |",
    "| BN-only CIFAR-10 ResNet-14 / -110 | ~48% / ~69.5%; full training ~91% / ~93.3% | [third-party] |",
]
OTHER_LINES = [
    "Untrained networks: ≈10%. The v1 figure also has \"BN + shortcut + output\" (R-14 ≈63.2 … R-866 ≈81.9)",
    "says 27% of γ fall below 0.01 under BN-only against 9% with full training.",
]
ARCH_ROWS = [
    "| ResNet-14 | 175,258 | 1,120 | 650 |", "| ResNet-32 | 466,906 | 2,464 | 650 |",
    "| ResNet-56 | 855,770 | 4,256 | 650 |", "| ResNet-110 | 1,730,714 | 8,288 | 650 |",
    "| ResNet-218 | 3,480,602 | 16,352 | 650 |", "| ResNet-434 | 6,980,378 | 32,480 | 650 |",
    "| ResNet-866 | 13,979,930 | 64,736 | 650 |", "| ResNet-20 | 272,474 | 1,568 | 650 |",
    "| ResNet-14, W=32 / 64 / 128 / 256 / 512 | 696,618 / 2,777,674 / 11,093,130 / 44,337,418 / 177,279,498 | "
    "2,240 / 4,480 / 8,960 / 17,920 / 35,840 | |",
]
COLUMNS = (("bn", "[paper v1 figure]"), ("bn", "[port]"), ("all", "[paper v1 figure]"), ("all", "[port]"))


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def entry(text: str):
    """A table cell as (low, high) percent, None for "—"; ≈x gives (x, x), ≈79–80 gives (79, 80)."""
    if text == "—":
        return None
    nums = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text.split("(")[0])]
    return (nums[0], nums[-1])


def table():
    """{(model, train, source): (low, high) or None} from the copied per-depth and per-width rows."""
    out = {}
    for row in DEPTH_ROWS.splitlines():
        name, *values = cells(row)
        model = f"cifar_resnet_{name.split('-')[1]}"
        for (train, source), v in zip(COLUMNS, values):
            out[model, train, source] = entry(v)
    name, *values = cells(WIDTH_ROW)
    widths = re.findall(r"\d+", name.split("width")[1])
    for (train, source), v in zip(COLUMNS, values):
        for width, part in zip(widths, v.lstrip("≈").split(" / "), strict=True):
            out[f"cifar_resnet_14_{width}", train, source] = entry(part)
    return out


def find(model, train, source, metric="top1"):
    return [p for p in paper.PAPER_NUMBERS if (p.model, p.train, p.source, p.metric) == (model, train, source, metric)]


@pytest.mark.skipif(not PAPER_MD.exists(), reason=f"PAPER.md not found at {PAPER_MD}")
def test_the_rows_copied_here_are_paper_md_s():
    text = PAPER_MD.read_text()
    for line in DEPTH_ROWS.splitlines() + [WIDTH_ROW, UNOFFICIAL_PORT_ROW] + HEADLINE_ROWS + OTHER_LINES + ARCH_ROWS:
        assert line in text, line


def test_every_number_has_a_known_source_and_a_value_in_range():
    assert len(paper.PAPER_NUMBERS) == 59
    for p in paper.PAPER_NUMBERS:
        assert p.source in paper.SOURCES and p.where, p
        assert 0 < p.value < 1 and p.metric in ("top1", "top5", "fraction_disabled", "fraction_gamma_below_0.01"), p
        # Figure readings are approximate, and so are the numbers PAPER.md gives as "~x" or "around x";
        # the ports' single runs and the γ summary are printed values.
        tilde = p.source == "[third-party]" and p.series in ("BN-only", "all")
        assert p.approximate == (p.source == "[paper v1 figure]" or tilde or p.metric == "fraction_disabled"), p
        if p.model is not None:
            create_model(p.model, device="meta")  # a model bnonly can build


def test_per_depth_and_width_table_matches_paper_md():
    expected = table()
    assert len(expected) == 12 * 4
    for (model, train, source), cell in expected.items():
        found = find(model, train, source)
        if cell is None:  # "—": no number from that source
            assert found == [], (model, train, source)
            continue
        (p,) = found
        low, high = cell
        assert 100 * p.value == pytest.approx((low + high) / 2), (model, train, source)
        assert p.series == ("BN-only" if train == "bn" else "all") + (", ResNet-14 by width" if "14_" in model else "")
    # The two ends of the table, spelled out.
    assert [p.value for p in find("cifar_resnet_14", "bn", "[port]")] == [0.469]
    assert [p.value for p in find("cifar_resnet_14_512", "all", "[paper v1 figure]")] == [0.947]
    assert "79–80" in find("cifar_resnet_434", "bn", "[paper v1 figure]")[0].where
    # Nothing else comes from these two sources.
    assert sum(p.source == "[port]" for p in paper.PAPER_NUMBERS) == sum(v is not None for (_, _, s), v in
                                                                        expected.items() if s == "[port]") == 16
    assert {p.model for p in paper.PAPER_NUMBERS if p.source == "[paper v1 figure]"} - {m for m, _, _ in expected} \
        == {None}  # the untrained network


def test_the_unofficial_port_row_is_kept_apart_from_the_faithful_port():
    values = [float(v) / 100 for v in cells(UNOFFICIAL_PORT_ROW)[1].split(" / ")]
    unofficial = [p for p in paper.PAPER_NUMBERS if p.series == "BN-only, unofficial port"]
    assert [p.value for p in unofficial] == pytest.approx(values) == [0.467, 0.513, 0.552, 0.652, 0.701, 0.737, 0.778]
    assert [p.model for p in unofficial] == [f"cifar_resnet_{d}" for d in (14, 32, 56, 110, 218, 434, 866)]
    assert all(p.source == "[third-party]" and "recipe not stated" in p.where for p in unofficial)
    faithful = [p.value for p in paper.PAPER_NUMBERS
                if p.source == "[port]" and p.train == "bn" and p.series == "BN-only"]
    assert faithful == [0.469, 0.569, 0.626, 0.7, 0.76]
    # A comparison uses the paper's figure and the faithful port first, the unofficial port last.
    assert [(p.source, p.value) for p in paper.for_model("cifar_resnet_32")] == \
        [("[paper v1 figure]", 0.576), ("[port]", 0.569), ("[third-party]", 0.513)]
    assert [p.source for p in paper.for_model("cifar_resnet_866")] == ["[paper]", "[paper v1 figure]", "[third-party]"]


def test_headline_and_other_numbers():
    top1 = paper.numbers("top1", "CIFAR-10")
    assert (top1[0].value, top1[0].source, top1[0].model) == (0.82, "[paper]", "cifar_resnet_866")
    (top5,) = paper.numbers("top5")
    assert (top5.value, top5.dataset, top5.model) == (0.32, "ImageNet", "imagenet_resnet_200")
    disabled = paper.numbers("fraction_disabled")
    assert [(p.value, p.approximate, p.source) for p in disabled] == [(1 / 3, True, "[paper]")]
    third = {(p.model, p.train): p.value for p in paper.PAPER_NUMBERS if p.source == "[third-party]" and p.series in
             ("BN-only", "all")}
    assert third == {("cifar_resnet_14", "bn"): 0.48, ("cifar_resnet_110", "bn"): 0.695,
                     ("cifar_resnet_14", "all"): 0.91, ("cifar_resnet_110", "all"): 0.933}
    shortcut = [p for p in paper.PAPER_NUMBERS if p.train == "bn+shortcut+output"]
    assert [(p.model, p.value, p.approximate, p.source) for p in shortcut] == [
        ("cifar_resnet_14", 0.632, True, "[paper v1 figure]"), ("cifar_resnet_866", 0.819, True, "[paper v1 figure]")]
    (untrained,) = [p for p in paper.PAPER_NUMBERS if p.train == "none"]
    assert (untrained.value, untrained.approximate, untrained.model) == (0.10, True, None)
    gamma = {p.train: p.value for p in paper.numbers("fraction_gamma_below_0.01")}
    assert gamma == {"bn": 0.27, "all": 0.09}


def test_parameter_counts_match_paper_md_and_the_models():
    expected = {}
    for row in ARCH_ROWS:
        name, total, bn, _ = cells(row)
        totals, bns = total.split(" / "), bn.split(" / ")
        names = [f"cifar_resnet_14_{w}" for w in re.findall(r"\d+", name.split("W=")[1])] if "W=" in name \
            else [f"cifar_resnet_{name.split('-')[1]}"]
        for n, t, b in zip(names, totals, bns, strict=True):
            expected[n] = dict(all=int(t.replace(",", "")), bn=int(b.replace(",", "")))
    cifar = {k: v for k, v in paper.PARAM_COUNTS.items() if k.startswith("cifar")}
    assert cifar == expected and len(cifar) == 13
    for name, counts in paper.PARAM_COUNTS.items():
        model = create_model(name, device="meta")
        assert counts == dict(all=sum(p.numel() for p in model.parameters()), bn=bn_param_count(model)), name
    # Every BN-only and full-training CIFAR-10 number has a place on the parameter axis.
    for p in paper.numbers("top1", "CIFAR-10"):
        if p.train in ("bn", "all"):
            assert paper.trainable_params(p) == paper.PARAM_COUNTS[p.model][p.train]
    assert paper.trainable_params(find("cifar_resnet_14_64", "bn", "[port]")[0]) == 4_480
