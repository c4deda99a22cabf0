"""The report is generated here (and so in CI) from a few tiny runs: tables, figures, paper numbers,
the same report from analysis.json files of the previous format, runs of other normalizers (and
none, and an unknown model) grouped and marked "n/a" where an analysis does not apply, and the
side-by-side comparison with the paper that runs at the paper's schedule get."""

import json
import shutil
import statistics

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from bnonly import config as cfgmod
from bnonly import paper_numbers as paper
from bnonly.analysis import column_values, migrate
from bnonly.cli import main
from bnonly.config import TrainConfig
from bnonly.models import MODEL_FAMILIES, create_model
from bnonly.report import NO_FOLDER, ReportError, make_report, model_shape, normalized, off_recipe
from bnonly.rundir import atomic_write_json
from bnonly.trainable import bn_param_count
from bnonly.training import train

# Shortened like the reproduction: 2 epochs of the 160-epoch recipe's shape, and otherwise the recipe
# (batch 128, its augmentation), so that the report sets these runs beside the published numbers.
TINY = dict(data="synthetic:train=128,test=64,classes=4,size=16", epochs=2, progress=False, device="cpu", threads=1)
RUNS = [("cifar_resnet_8_8", "bn", 0), ("cifar_resnet_8_8", "bn", 1), ("cifar_resnet_8_8", "all", 0),
        ("cifar_resnet_8_8", "random:matched", 0), ("cifar_resnet_14_8", "bn", 0), ("cifar_resnet_8_16", "bn", 0)]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    summaries = [train(TrainConfig(**TINY, model=m, train=t, seed=s, out=str(runs)), log=lambda *_: None)
                 for m, t, s in RUNS]
    # The sweep these runs belong to has three more: one interrupted before its first epoch ended
    # (config written, no summary), two never started, of one model and spec, one of them off the
    # recipe (the list of unfinished runs must tell the two apart).
    pending = TrainConfig(**TINY, model="cifar_resnet_8_8", train="output", seed=0, out=str(runs))
    atomic_write_json(runs / pending.run_name / "config.json", pending.to_dict())
    sweep = root / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(dict(base=TINY, grid=[
        dict(model=[m], train=[t], seed=[s]) for m, t, s in RUNS + [("cifar_resnet_8_8", "output", 0),
                                                                  ("cifar_resnet_20_8", "bn", 0)]]
        + [dict(model=["cifar_resnet_20_8"], train=["bn"], seed=[0], weight_init=["signed_constant"])])))
    note = root / "note.md"
    note.write_text("A note on **how** these runs were made.\n")
    out = root / "out"
    report = make_report(runs, out, title="Tiny report", note=note, sweep=sweep, analyze=True,
                         analyze_options=dict(draws=2, figures=False), log=lambda *_: None)
    return dict(root=root, runs=runs, out=out, report=report, summaries=summaries)


def test_tables_hold_every_run_and_seed_statistics(reported):
    out, summaries = reported["out"], reported["summaries"]
    df = pd.read_csv(out / "runs.csv")
    assert len(df) == len(RUNS) and df["analyzed"].all()
    assert sorted(df["test_acc"]) == sorted(s["test_acc"] for s in summaries)
    jl = pd.read_json(out / "runs.jsonl", lines=True)
    assert list(jl.columns) == list(df.columns) and len(jl) == len(df)
    groups = pd.read_csv(out / "groups.csv", keep_default_na=False, na_values=[""])
    bn8 = groups[(groups["model"] == "cifar_resnet_8_8") & (groups["train"] == "bn")].iloc[0]
    accs = [s["test_acc"] for s in summaries if s["model"] == "cifar_resnet_8_8" and s["train"] == "bn"]
    assert bn8["n"] == 2 and bn8["seeds"] == "0,1"
    assert bn8["test_acc_mean"] == pytest.approx(statistics.mean(accs))
    assert bn8["test_acc_std"] == pytest.approx(statistics.stdev(accs))
    assert bn8["trainable_params"] == bn_param_count(create_model("cifar_resnet_8_8", 4))
    analyses = [json.loads(p.read_text())["sections"]
                for p in reported["runs"].glob("cifar_resnet_8_8.bn.*/analysis.json")]
    assert bn8["fraction_dead_mean"] == pytest.approx(statistics.mean(a["disabled"]["fraction_dead"] for a in analyses))
    assert bn8["fraction_dead_relu_fed_mean"] == pytest.approx(
        statistics.mean(a["disabled"]["fraction_dead_relu_fed"] for a in analyses))
    assert bn8["gamma_below_0.05_std"] == pytest.approx(
        statistics.stdev(a["affine"]["fraction_gamma_below"]["0.05"] for a in analyses))
    for kind in ("relu_fed", "other"):  # the ablation split, averaged over seeds like every other number
        assert bn8[f"ablation_{kind}_disabled_zeroed_acc_mean"] == pytest.approx(statistics.mean(
            a["ablation"]["by_destination"][kind]["disabled_zeroed_acc"] for a in analyses))
    # Order: all before bn before the random baseline.
    assert list(groups[groups["model"] == "cifar_resnet_8_8"]["train"]) == ["all", "bn", "random:matched"]


def test_report_markdown_and_figures(reported):
    out, text = reported["out"], reported["report"].read_text()
    assert text.startswith("# Tiny report\n\nA note on **how** these runs were made.")
    for name in ("accuracy_vs_depth", "accuracy_vs_width", "accuracy_vs_params", "gamma_histograms",
                 "disabled_fractions", "ablation"):
        png = out / "figures" / f"{name}.png"
        assert f"](figures/{name}.png)" in text
        assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000
    assert "**The schedule is shortened**: 2 epochs instead of the recipe's 160" in text
    assert "lr ×0.1 at epochs 1, 1.5" in text
    # Unfinished and never-started runs are named.
    assert "`cifar_resnet_8_8` `output` seed 0: interrupted, no epoch done yet" in text
    assert f"`cifar_resnet_20_8` `bn` seed 0: {NO_FOLDER}" in text
    assert f"`cifar_resnet_20_8` `bn` [weight_init=signed_constant] seed 0: {NO_FOLDER}" in text
    assert "Not finished yet: 3 run(s)" in text
    # One normalizer, one kind of BN statistics, a shortened schedule: no column for either, no side-by-side.
    assert "| model | what trains | seeds | top-1 (%) |" in text and "At the paper's schedule" not in text
    # Published numbers appear with their source; the bn vs random comparison is filled in.
    assert "| deep ResNet, CIFAR-10, BN-only (ResNet-866) | 82.0% | [paper] abstract | not run here |" in text
    assert "cifar_resnet_8_8: bn " in text and "vs random:matched" in text
    # The |γ| < 0.01 shares fill the third-party claims (model not stated) for every analysed model.
    groups = pd.read_csv(out / "groups.csv", keep_default_na=False, na_values=[""])
    small = {(r["model"], r["train"]): 100 * r["gamma_below_0.01_mean"] for _, r in groups.iterrows()}
    bn8 = (groups["model"] == "cifar_resnet_8_8") & (groups["train"] == "bn")
    spread = 100 * groups.loc[bn8, "gamma_below_0.01_std"].item()
    assert (f"| BN features with \\|γ\\| < 0.01 after BN-only training | 27.0% | [third-party] summary of arXiv v1 "
            f"(model not stated) | cifar_resnet_8_8: {small['cifar_resnet_8_8', 'bn']:.1f} ± {spread:.1f}%; "
            f"cifar_resnet_14_8: {small['cifar_resnet_14_8', 'bn']:.1f}%;") in text
    assert (f"| BN features with \\|γ\\| < 0.01 after full training | 9.0% | [third-party] summary of arXiv v1 "
            f"(model not stated) | cifar_resnet_8_8: {small['cifar_resnet_8_8', 'all']:.1f}% |") in text
    assert "| cifar_resnet_8_8 | `bn` | 0,1 |" in text
    assert "other BNs (residual side): as many random zeroed |" in text  # the split table's header
    assert "| model | what trains | runs | \\|γ\\| < 0.01 | \\|γ\\| < 0.05 | \\|γ\\| < 0.1 | disabled |" in text
    # Each kind's columns side by side, in the order of DESTINATION_LABELS.
    assert ("| disabled, ReLU-fed BNs | ReLU-fed BNs: n zeroed | ReLU-fed BNs: disabled zeroed | ReLU-fed BNs: as many "
            "random zeroed | other BNs (residual side): n zeroed |") in text


def test_report_cli_and_errors(reported, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["report", str(reported["runs"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cifar_resnet_8_8" in printed and f"report: {out / 'report.md'}" in printed
    assert f"bnonly report {reported['runs']} --out {out}" in (out / "report.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    with pytest.raises(ReportError, match="is not a folder"):
        make_report(tmp_path / "nowhere")


def as_format_2(a: dict) -> dict:
    """The one flat object the format-2 code wrote for (BatchNorm) analysis ``a``: ``migrate`` reads it
    as version-1 sections holding the same numbers."""
    af, dis, ab = (a["sections"][k] for k in ("affine", "disabled", "ablation"))
    runner = ("version", "options", "seconds", "not_applicable")
    flat = {k: v for k, v in a.items() if k not in ("format", "sections", "bn_statistics")}
    flat.update({k: v for k, v in af.items() if k not in runner + ("layers",)})
    flat.update({k: v for k, v in dis.items()
                 if k not in runner + ("layers", "traced", "norms", "criteria", "n_measured")})
    layers = [{**{k: v for k, v in la.items() if k not in ("channels", "kind", "has_beta")},
               "feeds_relu": ld["destination"] == "relu_fed", "n_dead": ld["n_dead"],
               "fraction_dead": ld["fraction_dead"], "channels": la["channels"] | ld["channels"]}
              for la, ld in zip(af["layers"], dis["layers"])]
    flat.update(version=2, options=af["options"] | dis["options"] | ab["options"], layers=layers, seconds=1.0,
                ablation={k: v for k, v in ab.items() if k not in runner + ("norms",)})
    return flat


def test_report_of_format_2_analyses_is_the_same(reported, tmp_path):
    """Files written before sections existed are migrated when read: the same report, byte for byte."""
    runs = tmp_path / "runs"
    shutil.copytree(reported["runs"], runs)
    today = make_report(runs, tmp_path / "today").read_text()
    for path in runs.glob("*/analysis.json"):
        a = json.loads(path.read_text())
        old = as_format_2(a)
        # format 2 predates the supermask section (its columns are in runs.csv only, not in report.md)
        today_columns = {k: v for k, v in column_values(a).items() if not k.startswith("supermask")}
        assert column_values(migrate(old)) == today_columns
        path.write_text(json.dumps(old))
    assert make_report(runs, tmp_path / "old").read_text() == today
    today_csv = pd.read_csv(tmp_path / "today" / "runs.csv")
    today_csv = today_csv.drop(columns=[c for c in today_csv.columns if c.startswith("supermask")])
    assert pd.read_csv(tmp_path / "old" / "runs.csv").equals(today_csv)


def test_runs_of_one_config_in_other_arithmetic_are_told_apart(reported, tmp_path):
    """bf16 autocast is a compute setting (same run identity), so a float32 re-run of a config lands
    in its own folder; gathered beside the bf16 one it must be its own group, labelled, not a seed."""
    runs = tmp_path / "runs"
    source = next(reported["runs"].glob("cifar_resnet_8_8.bn.s0.*"))
    for sub in ("a", "b"):
        shutil.copytree(source, runs / sub / source.name)
    summary_path = runs / "b" / source.name / "summary.json"
    summary = json.loads(summary_path.read_text())
    flipped = not summary["compute"]["bf16"]
    summary["compute"]["bf16"], summary["test_acc"] = flipped, summary["test_acc"] + 0.05
    summary_path.write_text(json.dumps(summary))
    out = tmp_path / "out"
    text = make_report(runs, out).read_text()
    groups = pd.read_csv(out / "groups.csv", keep_default_na=False, na_values=[""])
    assert sorted(groups["variant"]) == ["precision=bf16", "precision=float32"]
    assert list(groups["n"]) == [1, 1] and list(groups["seeds"].astype(str)) == ["0", "0"]
    mine = groups[groups["variant"] == f"precision={'bf16' if flipped else 'float32'}"].iloc[0]
    assert mine["test_acc_mean"] == pytest.approx(summary["test_acc"])
    assert "| cifar_resnet_8_8 | `bn` | precision=bf16 | 0 |" in text
    assert "| cifar_resnet_8_8 | `bn` | precision=float32 | 0 |" in text
    runs_csv = pd.read_csv(out / "runs.csv")
    assert sorted(runs_csv["precision"]) == ["bf16", "float32"]


def test_report_without_analyses_says_so(tmp_path):
    runs = tmp_path / "runs"
    cfg = TrainConfig(**{**TINY, "epochs": 1}, model="cifar_resnet_8_8", train="bn", out=str(runs))
    train(cfg, log=lambda *_: None)
    text = make_report(runs, tmp_path / "out").read_text()
    assert "No run has an analysis.json yet" in text
    assert "No depth sweep among these runs" in text and "Not analysed yet (1)" in text


def test_configs_of_one_recipe_written_by_older_versions_compare_equal():
    today = TrainConfig(model="cifar_resnet_14", data="d").to_dict()
    older = {k: v for k, v in today.items() if k not in ("image_size", "sync_bn")} | {"augment": "cifar"}
    assert normalized(older) == normalized(today)
    assert normalized(today | {"augment": "none"})["augment"] == "none"


def test_depth_figure_sets_the_published_series_in_their_specs_colours_at_this_width(tmp_path, monkeypatch):
    """The BN-only and full-training series of the paper's figure and the port take the colour of this
    study's `bn` and `all` lines, a marker per source, and the ResNet-14 width series (other widths)
    stay off a width-16 panel, where they would stack up at depth 14."""
    import matplotlib
    from matplotlib.colors import to_rgba

    import bnonly.report as report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = pd.DataFrame([dict(model=f"cifar_resnet_{d}", train=t, variant="precision=bf16", family="cifar_resnet",
                                normalizer="BatchNorm", width=16, depth=d, test_acc_mean=a, test_acc_std=float("nan"))
                           for d, t, a in [(14, "bn", 0.47), (32, "bn", 0.575), (14, "all", 0.864)]])
    colors = {"all [precision=bf16]": "C0", "bn [precision=bf16]": "C1"}
    drawn = {}
    monkeypatch.setattr(report, "_save", lambda plt, fig, path: drawn.setdefault("fig", fig))
    report.fig_accuracy_vs_depth(plt, groups, colors, tmp_path / "depth.png")
    lines = {ln.get_label(): ln for ln in drawn["fig"].axes[0].get_lines() if not ln.get_label().startswith("_")}
    published = {label.removesuffix(" (published, CIFAR-10)"): ln for label, ln in lines.items()}
    port_bn, v1_all = published["[port] BN-only"], published["[paper v1 figure] all"]
    assert to_rgba(port_bn.get_color()) == to_rgba("C1") and port_bn.get_marker() == "D"
    assert to_rgba(v1_all.get_color()) == to_rgba("C0") and v1_all.get_marker() == "s"
    assert list(port_bn.get_xdata())[:3] == [14, 32, 56] and list(port_bn.get_ydata())[:3] == pytest.approx(
        [46.9, 56.9, 62.6])
    assert published["[paper] BN-only"].get_marker() == "*"
    assert not [label for label in lines if "by width" in label]
    assert to_rgba(published["[paper v1 figure] BN + shortcut + output"].get_color()) == to_rgba("0.35")  # not run
    plt.close(drawn["fig"])


def test_model_shape():
    assert model_shape("cifar_resnet_14") == ("cifar_resnet", 14, 16)
    assert model_shape("cifar_resnet_14_64") == ("cifar_resnet", 14, 64)
    assert model_shape("imagenet_resnet_50") == ("imagenet_resnet", 50, 64)
    assert model_shape("cifar_vgg_16") == ("cifar_vgg", 16, None)
    assert model_shape("mynet") == ("mynet", None, None)


def test_paper_numbers_are_sourced_and_match_the_parameter_table():
    assert all(p.source in paper.SOURCES and 0 < p.value < 1 for p in paper.PAPER_NUMBERS)
    assert paper.numbers("top1", "CIFAR-10")[0].value == 0.82
    port = [p.value for p in paper.PAPER_NUMBERS if "port" in p.series]
    assert port == [0.467, 0.513, 0.552, 0.652, 0.701, 0.737, 0.778]
    for name in ("cifar_resnet_14", "cifar_resnet_110"):
        model = create_model(name, device="meta")
        assert paper.PARAM_COUNTS[name]["bn"] == bn_param_count(model)
        assert paper.PARAM_COUNTS[name]["all"] == sum(p.numel() for p in model.parameters())


class NormNet(nn.Module):
    """Tiny models of three normalizer cases: ``gn`` conv-GroupNorm-ReLU (a ResNet's stem);
    ``vit`` patch tokens with a pre-norm LayerNorm feeding a linear layer, then a final LayerNorm
    (no norm feeds an activation); ``none`` conv-ReLU, no normalizer."""

    def __init__(self, norm: str, num_classes: int):
        super().__init__()
        self.norm = norm
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.n1 = nn.GroupNorm(2, 8) if norm == "gn" else nn.LayerNorm(8) if norm == "vit" else nn.Identity()
        self.mix, self.n2 = nn.Linear(8, 8), nn.LayerNorm(8) if norm == "vit" else nn.Identity()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        # NCHW: torch 2.13's CPU GroupNorm backward crashes on channels_last input that needs no gradient.
        x = self.conv(x).contiguous()
        if self.norm == "vit":
            t = x.flatten(2).transpose(1, 2)
            return self.fc(self.n2(t + self.mix(self.n1(t))).mean(1))
        return self.fc(torch.relu(self.n1(x)).mean((2, 3)))


@pytest.fixture
def norm_family():
    @MODEL_FAMILIES.register("normnet", regex=r"normnet_(?P<depth>[1-9]\d*)_(?P<norm>gn|vit|none)",
                             patterns="normnet_D_gn|vit|none", num_classes=4, input_shape=(3, 16, 16),
                             help="tiny GroupNorm, pre-norm LayerNorm and norm-free models, for the test",
                             examples=["normnet_2_gn"])
    def build(depth: str, norm: str, num_classes: int) -> nn.Module:
        return NormNet(norm, num_classes)

    yield
    MODEL_FAMILIES.unregister("normnet")


def test_runs_of_other_normalizers_are_grouped_and_marked_not_applicable(norm_family, reported, tmp_path):
    """Runs are grouped and labelled by normalizer (from the model itself); where an analysis does
    not apply (no norm feeds an activation; no norm at all) the report says n/a, and a model name no
    registered family knows is reported as it is."""
    runs = tmp_path / "runs"
    shutil.copytree(next(reported["runs"].glob("cifar_resnet_8_8.bn.s0.*")), runs / "bn")
    for model, spec in (("normnet_2_gn", "norm"), ("normnet_2_vit", "norm"), ("normnet_2_none", "all")):
        train(TrainConfig(**TINY, model=model, train=spec, out=str(runs)), log=lambda *_: None)
    mystery = runs / "mystery"
    shutil.copytree(runs / "bn", mystery)
    for name in ("summary.json", "config.json"):
        (mystery / name).write_text((mystery / name).read_text().replace('"cifar_resnet_8_8"', '"mystery_net"'))
    text = make_report(runs, tmp_path / "out", analyze=True, analyze_options=dict(draws=2, figures=False),
                       log=lambda *_: None).read_text()
    groups = pd.read_csv(tmp_path / "out" / "groups.csv", keep_default_na=False, na_values=[""])
    assert dict(zip(groups["model"], groups["normalizer"])) == {
        "cifar_resnet_8_8": "BatchNorm", "mystery_net": "unknown", "normnet_2_gn": "GroupNorm(2)",
        "normnet_2_none": "none", "normnet_2_vit": "LayerNorm"}
    assert dict(zip(groups["model"], groups["family"]))["mystery_net"] == "mystery_net"
    assert model_shape("normnet_2_gn") == ("normnet", 2, None)
    runs_csv = pd.read_csv(tmp_path / "out" / "runs.csv")
    vit = runs_csv[runs_csv["model"] == "normnet_2_vit"].iloc[0]
    assert vit["disabled_not_applicable"].startswith("no normalization layer's output reaches a ReLU-like activation")
    assert "## What the normalization layers learned" in text
    assert "| model | normalizer | what trains | seeds | top-1 (%) |" in text
    rows = table_rows(text, "| model | normalizer | what trains | runs |")
    gn, vit_row, none = rows["normnet_2_gn"], rows["normnet_2_vit"], rows["normnet_2_none"]
    assert gn[1] == "GroupNorm(2)" and "n/a" not in gn
    assert vit_row[1] == "LayerNorm" and vit_row[7:9] == ["n/a", "n/a"]  # disabled, disabled with β < 0
    none_acc = runs_csv.loc[runs_csv["model"] == "normnet_2_none", "test_acc"].item()
    assert none[4:9] == ["n/a"] * 5 and none[9] == f"{100 * none_acc:.1f}"  # γ and disabled n/a; accuracy kept
    assert "- GELU" not in text and "- ReLU: the norm output is <= 0 at every position" in text


def table_rows(text: str, header: str) -> dict[str, list[str]]:
    """The cells of each row of the report.md table whose header starts with ``header``, by model."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells
    return rows


def as_paper_schedule(run_dir, model: str, **summary_changes) -> None:
    """Make a tiny run look like a 160-epoch run of ``model`` (the report reads only its files)."""
    for name in ("summary.json", "config.json"):
        d = json.loads((run_dir / name).read_text())
        d.update(model=model, epochs=160.0)
        if name == "summary.json":
            d.update(summary_changes)
        (run_dir / name).write_text(json.dumps(d))


def test_runs_at_the_papers_schedule_get_the_paper_and_the_port_side_by_side(reported, tmp_path):
    runs = tmp_path / "runs"
    for pattern in ("cifar_resnet_8_8.bn.s0.*", "cifar_resnet_8_8.bn.s1.*", "cifar_resnet_8_8.all.s0.*"):
        source = next(reported["runs"].glob(pattern))
        shutil.copytree(source, runs / source.name)
        recalibrated = {"bn_statistics": {"train": "batch", "eval": "recalibrated over 200 training batches"}}
        as_paper_schedule(runs / source.name, "cifar_resnet_14", **(recalibrated if ".all." in pattern else {}))
    text = make_report(runs, tmp_path / "out").read_text()
    groups = pd.read_csv(tmp_path / "out" / "groups.csv", keep_default_na=False, na_values=[""]).set_index("train")
    bn, full = groups.loc["bn"], groups.loc["all"]
    section = text[text.index("## At the paper's schedule"):text.index("## Against the published numbers")]
    mean, std = 100 * bn["test_acc_mean"], 100 * bn["test_acc_std"]
    assert (f"| cifar_resnet_14 | `bn` | 0,1 | {mean:.1f} ± {std:.1f} | ≈47.7 | {mean - 47.7:+.1f} | 46.9 | "
            f"{mean - 46.9:+.1f} |") in section
    acc = 100 * full["test_acc_mean"]
    assert (f"| cifar_resnet_14 | `all` | 0 | {acc:.1f} | ≈90.4 | {acc - 90.4:+.1f} | 89.9 | "
            f"{acc - 89.9:+.1f} |") in section
    dead, relu_fed = 100 * bn["fraction_dead_mean"], 100 * bn["fraction_dead_relu_fed_mean"]
    assert (f"| cifar_resnet_14 | `bn` | 2 | {dead:.1f} ± {100 * bn['fraction_dead_std']:.1f} | "
            f"{dead - 100 / 3:+.1f} | {relu_fed:.1f} ± {100 * bn['fraction_dead_relu_fed_std']:.1f} | "
            f"{relu_fed - 100 / 3:+.1f} | ") in section
    assert ("| disabled, all BNs | gap to ≈33% | disabled, ReLU-fed BNs | gap to ≈33% | acc | disabled zeroed |"
            in section)
    assert "- **Data**: `synthetic:train=128,test=64,classes=4,size=16`: the paper and the port" in section
    assert "- **Seeds**: bnonly ran seed(s) 0 / 0,1 per configuration" in section
    assert "read off a figure" in section and "- **BatchNorm statistics**: some runs" in section
    assert "| BN statistics (train / eval) |" in text
    assert "| cifar_resnet_14 | `all` | batch / recalibrated over 200 training batches | 0 |" in text


@pytest.mark.parametrize("change,expected", [
    ({}, []), ({"data": "elsewhere", "epochs": 10.0, "eval_every": 5}, []),
    ({"classes": "cat,dog", "init_from": "runs/a"}, ["init_from", "classes"]),
    ({"batch_size": 64, "weight_init": "orthogonal"}, ["weight_init", "batch_size"]),
    ({"augment": "cifar"}, []),  # an older name of what "auto" picks
])
def test_off_recipe_names_the_fields_that_make_another_experiment(change, expected):
    cfg = normalized(TrainConfig(model="cifar_resnet_14").to_dict() | change)
    assert off_recipe(cfg) == expected
    # ImageNet ResNets are held to the imagenet preset, not to the CIFAR defaults.
    imagenet = TrainConfig().replace(**cfgmod.PRESETS["imagenet"]).to_dict()
    assert off_recipe(normalized(imagenet)) == []
    assert off_recipe(normalized(imagenet | {"lr": 0.1})) == ["lr"]


def test_runs_on_a_class_subset_are_not_set_beside_the_published_numbers(tmp_path):
    # Found by results/transfer: 5-class accuracies were listed against the paper's 10-class ones.
    runs = tmp_path / "runs"
    for model, classes in (("cifar_resnet_14", "class0,class1"), ("cifar_resnet_8_8", "")):
        train(TrainConfig(**{**TINY, "data": "synthetic:train=512,test=64,classes=4,size=16"}, model=model,
                          train="bn", classes=classes, out=str(runs)), log=lambda *_: None)
    text = make_report(runs, tmp_path / "out").read_text()
    # The variant column names only what leaves the recipe.
    assert "| cifar_resnet_14 | `bn` | classes=class0,class1 |" in text
    assert "| cifar_resnet_8_8 | `bn` | recipe |" in text
    assert "1 configuration(s) here leave the paper's recipe in more than the data and the schedule's length " \
           "(`classes`): a different experiment, left out of this table." in text
    published = [line for line in text.splitlines() if line.startswith("| BN-only CIFAR-10 ResNet-14 |")]
    assert published and all(line.endswith("| not run here |") for line in published)


def test_norm_on_a_batchnorm_model_is_set_beside_the_papers_bn_numbers(tmp_path):
    # On a ResNet whose only normalizer is BatchNorm, `norm` trains exactly what `bn` does.
    runs = tmp_path / "runs"
    summary = train(TrainConfig(**TINY, model="cifar_resnet_14", train="norm", out=str(runs)), log=lambda *_: None)
    text = make_report(runs, tmp_path / "out").read_text()
    here = f"| {100 * summary['test_acc']:.1f}% (1 seed(s), 2 epochs) |"
    rows = [line for line in text.splitlines() if line.startswith("| BN-only CIFAR-10 ResNet-14 |")]
    assert rows and all(line.endswith(here) for line in rows)
