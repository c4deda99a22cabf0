"""The files users' scripts read: each carries its format, matches its shipped JSON Schema, and
every format bnonly has written reads into today's structure (bnonly.load_run).

The fixtures in tests/fixtures/formats/ are real run folders written by older bnonly commits
(the same 1-epoch BN-only cifar_resnet_8 on synthetic data): 5c30742 (analysis.json format 1,
summary with top-level bf16/channels_last), ee0acd1 (analysis format 2, summary with compute),
eeb8b5f (analysis format 3; config, summary and metrics without a format key), a compact file
exported by eeb8b5f, and 81a5242 (config and summary format 2, before ``fused_norm``).
"""

import json
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest
import torch
from conftest import QUIET, TINY

import bnonly
from bnonly import cli, config, formats
from bnonly.analysis import analyze_run
from bnonly.compact import export, read_compact
from bnonly.errors import FormatError, MissingExtra
from bnonly.report import collect

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
OLD_RUNS = {"5c30742-analysis1": 1, "ee0acd1-analysis2": 2, "eeb8b5f-analysis3": 3}


def _validate(kind: str, obj: dict) -> None:
    jsonschema.Draft202012Validator(formats.schema(kind)).validate(obj)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A run written by today's bnonly, analysed, and exported as a compact file."""
    root = tmp_path_factory.mktemp("fresh")
    summary = bnonly.train(bnonly.TrainConfig(**dict(TINY, epochs=1, milestones=(), schedule_epochs=1,
                                                     out=str(root))), **QUIET)
    run = Path(summary["run_dir"])
    analyze_run(run, draws=2, figures=False)
    export(run, root / "run.compact")
    return run, root / "run.compact"


def test_the_shipped_config_schema_is_the_one_the_fields_give():
    assert formats.schema("config") == config.json_schema(), "run python3 tools/write_schemas.py"


def test_every_file_written_today_has_its_format_and_matches_its_schema(fresh):
    run, compact = fresh
    cfg, summary = json.loads((run / "config.json").read_text()), json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    analysis = json.loads((run / "analysis.json").read_text())
    assert (cfg["format"], summary["format"], analysis["format"]) == (3, 3, 3)
    assert [r["format"] for r in rows] == [2]
    _validate("config", cfg)
    _validate("summary", summary)
    _validate("metrics", rows[0])
    _validate("analysis", analysis)
    payload = read_compact(compact)
    _validate("compact", {k: v for k, v in payload.items() if not isinstance(v, (dict, torch.Tensor))
                          or k in ("config", "summary")} | {"trained": None, "buffers": None})
    # The compact format covers its config: the fields, without config.json's own format key.
    assert payload["format"] == 1 and payload["config"] == {k: v for k, v in cfg.items() if k != "format"}


def test_the_schemas_refuse_what_they_should(fresh):
    run, _ = fresh
    summary = json.loads((run / "summary.json").read_text())
    for broken in ({**summary, "test_acc": 1.5}, {k: v for k, v in summary.items() if k != "test_acc"},
                   {**summary, "run_id": "not-a-hash"}):
        with pytest.raises(jsonschema.ValidationError):
            _validate("summary", broken)
    cfg = json.loads((run / "config.json").read_text())
    for broken in ({**cfg, "epochs": 0}, {**cfg, "optimiser": "sgd"}, {**cfg, "gamma_init": "normal"}):
        with pytest.raises(jsonschema.ValidationError):
            _validate("config", broken)


@pytest.mark.parametrize("name", sorted(OLD_RUNS))
def test_every_older_run_folder_reads_into_todays_structure(name):
    record = bnonly.load_run(FIXTURES / name)
    assert record.formats == {"config": 1, "summary": 1, "metrics": 1, "analysis": OLD_RUNS[name]}
    # The config read from an old file is the run it was: the same identity hash it was trained under.
    assert record.config.run_id == record.summary["run_id"] == "012776c85810"
    assert record.done and record.test_acc == 0.265625
    _validate("summary", record.summary)
    _validate("analysis", record.analysis)
    for row in record.metrics:
        _validate("metrics", row)
    assert record.summary["compute"]["channels_last"] is True and record.summary["compute"]["bf16"] is False
    assert record.summary["bn_statistics"] == {"train": "batch", "eval": "running averages"}


def test_a_format_2_run_reads_as_trained_without_the_fused_kernel():
    record = bnonly.load_run(FIXTURES / "81a5242-config2")
    assert record.formats == {"config": 2, "summary": 2, "metrics": 2, "analysis": 3}
    assert record.config.fused_norm is None and record.config.run_id == record.summary["run_id"] == "2344a616bfc1"
    assert record.summary["format"] == 3 and record.summary["compute"]["fused_norm"] is False
    assert record.summary["compute"]["channels_last"] is True and record.test_acc == 0.2890625
    _validate("summary", record.summary)


def test_analysis_format_1_keeps_its_numbers_in_the_sections():
    """The script of the issue read ``fraction_gamma_below`` at the top level of a format-1 file:
    the same numbers are in today's affine section."""
    folder = FIXTURES / "5c30742-analysis1"
    old = json.loads((folder / "analysis.json").read_text())
    assert old["version"] == 1 and "sections" not in old
    record = bnonly.load_run(folder)
    assert record.analysis["format"] == 3
    assert record.analysis["sections"]["affine"]["fraction_gamma_below"] == old["fraction_gamma_below"]
    assert record.analysis["sections"]["disabled"]["fraction_dead"] == old["fraction_dead"]


def test_an_old_compact_file_reads_and_rebuilds():
    file = FIXTURES / "eeb8b5f-compact1.bnonly"
    record = bnonly.load_run(file)
    assert record.formats == {"compact": 1, "config": 1, "summary": 1} and record.metrics == []
    assert record.config.model == "cifar_resnet_8" and record.test_acc == 0.265625
    _validate("summary", record.summary)
    rebuilt = bnonly.load_compact(file)
    assert rebuilt.cfg.run_id == record.config.run_id and rebuilt.summary == record.summary


def test_old_files_are_used_by_the_commands_as_they_are(tmp_path):
    """bnonly report and analyze read an old folder without rewriting it first."""
    runs = tmp_path / "runs"
    shutil.copytree(FIXTURES / "ee0acd1-analysis2", runs / "ee0acd1-analysis2")
    rows, analyses, configs = collect(runs)
    assert [r["test_acc"] for r in rows] == [0.265625] and configs[0]["model"] == "cifar_resnet_8"
    assert analyses[rows[0]["run"]]["format"] == 3


@pytest.mark.parametrize("kind,file", [("summary", "summary.json"), ("config", "config.json"),
                                       ("analysis", "analysis.json")])
def test_a_file_from_a_newer_bnonly_is_refused_with_the_upgrade(tmp_path, kind, file):
    folder = tmp_path / "run"
    shutil.copytree(FIXTURES / "eeb8b5f-analysis3", folder)
    values = json.loads((folder / file).read_text())
    (folder / file).write_text(json.dumps({**values, "format": formats.CURRENT[kind] + 1}))
    with pytest.raises(FormatError, match=r"written by a newer bnonly.*pip install -U bnonly"):
        bnonly.load_run(folder)


def test_a_folder_without_a_run_is_refused(tmp_path):
    with pytest.raises(FormatError, match="not a run folder"):
        bnonly.load_run(tmp_path)


def test_a_runs_config_json_is_a_config_file(fresh):
    run, _ = fresh
    cfg = config.resolve(config_file=run / "config.json")
    assert cfg.run_id == json.loads((run / "summary.json").read_text())["run_id"]


def test_version_has_one_source(capsys):
    from importlib.metadata import version

    assert version("bnonly") == bnonly.__version__
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"bnonly {bnonly.__version__}"


@pytest.mark.parametrize("module,argv,extra", [
    ("pandas", ["report", "RUNS"], "report"), ("matplotlib", ["report", "RUNS"], "report")])
def test_a_command_without_its_extra_says_which_to_install(fresh, tmp_path, monkeypatch, capsys, module, argv, extra):
    run, _ = fresh
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    argv = [str(run.parent) if a == "RUNS" else a for a in argv] + ["--out", str(tmp_path / "report")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install 'bnonly[{extra}]'" in err and module in err


@pytest.mark.parametrize("module,extra,call", [
    ("tensorboard", "tensorboard", lambda tmp: bnonly.train(bnonly.TrainConfig(**dict(TINY, log="tensorboard",
                                                                                      out=str(tmp))), **QUIET)),
    ("submitit", "slurm", lambda tmp: __import__("bnonly.slurm").slurm.local_executor(tmp)),
    ("matplotlib", "report", lambda tmp: __import__("bnonly.analysis").analysis.pyplot())])
def test_each_optional_package_is_refused_naming_its_extra(tmp_path, monkeypatch, module, extra, call):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtra, match=rf"needs the {module} package.*pip install 'bnonly\[{extra}\]'"):
        call(tmp_path)


def test_the_docs_list_every_format_and_include_every_schema():
    page = (Path(__file__).parents[1] / "docs" / "formats.md").read_text()
    assert formats.history_markdown() in page
    for kind in formats.CURRENT:
        assert f'--8<-- "src/bnonly/schemas/{kind}.schema.json"' in page


def test_the_changelog_names_every_current_format():
    changelog = (Path(__file__).parents[1] / "CHANGELOG.md").read_text()
    assert f"## {bnonly.__version__}" in changelog
    for kind, number in formats.CURRENT.items():
        assert f"{formats.FILES[kind].split(' ')[0]} format {number}" in changelog
