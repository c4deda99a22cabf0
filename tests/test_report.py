"""The report is generated here (and so in CI) from a few tiny runs: tables, figures, paper numbers,
and the same report from analysis.json files of the previous format."""

import json
import shutil
import statistics

import pandas as pd
import pytest
import yaml

from bnonly import paper_numbers as paper
from bnonly.analysis import migrate
from bnonly.cli import main
from bnonly.config import TrainConfig
from bnonly.models import create_model
from bnonly.report import ReportError, make_report, model_shape, normalized
from bnonly.rundir import atomic_write_json
from bnonly.trainable import bn_param_count
from bnonly.training import train

# Shortened like the reproduction: 2 epochs of the 160-epoch recipe's shape.
TINY = dict(data="synthetic:train=128,test=64,classes=4,size=16", batch_size=32, epochs=2, augment="none",
            progress=False, device="cpu", threads=1)
RUNS = [("cifar_resnet_8_8", "bn", 0), ("cifar_resnet_8_8", "bn", 1), ("cifar_resnet_8_8", "all", 0),
        ("cifar_resnet_8_8", "random:matched", 0), ("cifar_resnet_14_8", "bn", 0), ("cifar_resnet_8_16", "bn", 0)]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    summaries = [train(TrainConfig(**TINY, model=m, train=t, seed=s, out=str(runs)), log=lambda *_: None)
                 for m, t, s in RUNS]
    # The sweep these runs belong to has two more: one interrupted before its first epoch ended
    # (config written, no summary), one never started.
    pending = TrainConfig(**TINY, model="cifar_resnet_8_8", train="output", seed=0, out=str(runs))
    atomic_write_json(runs / pending.run_name / "config.json", pending.to_dict())
    sweep = root / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(dict(base=TINY, grid=[
        dict(model=[m], train=[t], seed=[s]) for m, t, s in RUNS + [("cifar_resnet_8_8", "output", 0),
                                                                  ("cifar_resnet_20_8", "bn", 0)]])))
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
    assert "`cifar_resnet_20_8` `bn` seed 0: not started" in text
    assert "Not finished yet: 2 run(s)" in text
    # Published numbers appear with their source; the bn vs random comparison is filled in.
    assert "| deep ResNet, CIFAR-10, BN-only (ResNet-866) | 82.0% | [paper] abstract | not run here |" in text
    assert "cifar_resnet_8_8: bn " in text and "vs random:matched" in text
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
    """The one flat object the format-2 code wrote for analysis ``a`` (``migrate`` undoes it)."""
    af, dis, ab = (a["sections"][k] for k in ("affine", "disabled", "ablation"))
    runner = ("version", "options", "seconds")
    flat = {k: v for k, v in a.items() if k not in ("format", "sections")}
    flat.update({k: v for k, v in af.items() if k not in runner + ("layers",)})
    flat.update({k: v for k, v in dis.items() if k not in runner + ("layers",)})
    layers = [{**{k: v for k, v in la.items() if k != "channels"}, **{k: ld[k] for k in ("feeds_relu", "n_dead",
               "fraction_dead")}, "channels": la["channels"] | ld["channels"]}
              for la, ld in zip(af["layers"], dis["layers"])]
    flat.update(version=2, options=af["options"] | dis["options"] | ab["options"], layers=layers, seconds=1.0,
                ablation={k: v for k, v in ab.items() if k not in runner})
    return flat


def test_report_of_format_2_analyses_is_the_same(reported, tmp_path):
    """Files written before sections existed are migrated when read: the same report, byte for byte."""
    runs = tmp_path / "runs"
    shutil.copytree(reported["runs"], runs)
    today = make_report(runs, tmp_path / "today").read_text()
    for path in runs.glob("*/analysis.json"):
        a = json.loads(path.read_text())
        old = as_format_2(a)
        assert migrate(old)["sections"] == {k: {**s, "seconds": None} for k, s in a["sections"].items()}
        path.write_text(json.dumps(old))
    assert make_report(runs, tmp_path / "old").read_text() == today
    assert pd.read_csv(tmp_path / "old" / "runs.csv").equals(pd.read_csv(tmp_path / "today" / "runs.csv"))


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
