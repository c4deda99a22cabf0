"""bnonly.compact: export -> load/import rebuilds a run bit for bit from its seed and trained entries, and every
bad input is one clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import QUIET, TINY

import bnonly
from bnonly.cli import main
from bnonly.compact import CompactError, export, import_run, read_compact, write_compact
from bnonly.data import make_batches, open_dataset
from bnonly.training import evaluate

SPECS = ["bn", "bn+output", "random:matched", "random-per-channel:2", "all"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished tiny run per what-trains spec, plus BN-only variants that change the buffers
    (recalibrated, frozen statistics) and one without BN affine."""
    out = tmp_path_factory.mktemp("runs")
    variants = {spec: dict(train=spec) for spec in SPECS}
    variants["bn recalibrated"] = dict(train="bn", recalibrate_bn=2)
    variants["bn frozen-stats"] = dict(train="bn", bn_stats="frozen")
    variants["all no-affine"] = dict(train="all", bn_affine=False)
    return {name: Path(bnonly.train(bnonly.TrainConfig(**{**TINY, "out": str(out), **kw}), **QUIET)["run_dir"])
            for name, kw in variants.items()}


def _bits_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
        for k in a)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name", [*SPECS, "bn recalibrated", "bn frozen-stats", "all no-affine"])
def test_round_trip_is_bit_for_bit(runs, tmp_path, name):
    run = runs[name]
    summary = json.loads((run / "summary.json").read_text())
    exported = export(run, tmp_path / "run.bnc")
    # Only the trained entries are stored (their positions are re-drawn from the seed), and every buffer:
    # cifar_resnet_8_8 has 9 BatchNorm layers of 168 channels in all: 168 means + 168 variances + 9 counters.
    assert exported.trained == summary["trainable_params"]
    assert exported.buffers == 2 * 168 + 9 and exported.buffer_tensors == 3 * 9
    payload = read_compact(tmp_path / "run.bnc")
    assert {k: v.numel() for k, v in payload["trained"].items()} == {"float32": summary["trainable_params"]}
    assert {k: v.numel() for k, v in payload["buffers"].items()} == {"float32": 336, "int64": 9}
    assert exported.bytes == (tmp_path / "run.bnc").stat().st_size
    assert exported.compact == (not name.startswith("all"))
    if exported.compact:
        assert exported.bytes < exported.final_bytes / 8
    loaded = bnonly.load_compact(tmp_path / "run.bnc")
    assert loaded.checked_against == f"bit for bit against {(run / 'final.pt').resolve()}"
    assert _bits_equal(loaded.state, _load(run / "final.pt"))
    assert _bits_equal(loaded.init_state, _load(run / "init.pt"))
    assert loaded.cfg.train == summary["train"] and loaded.num_classes == 4


def test_random_matched_stores_values_not_positions(runs, tmp_path):
    """random:matched trains 336 scattered conv weights: the file holds their 336 values only, and
    the rebuilt model trains as many entries as moved in training, or more (a few may not have moved)."""
    run = runs["random:matched"]
    export(run, tmp_path / "m.bnc")
    payload = read_compact(tmp_path / "m.bnc")
    assert payload["trained"]["float32"].numel() == 336 and set(payload["trained"]) == {"float32"}
    init, final = _load(run / "init.pt"), _load(run / "final.pt")
    moved = sum(int((init[k] != final[k]).sum()) for k in init if init[k].dim() > 1)  # conv and linear weights
    loaded = bnonly.load_compact(tmp_path / "m.bnc")
    trainable = sum(p.numel() for p in bnonly.trainable_parameters(loaded.model))
    assert trainable == 336 and 0 < moved <= 336


def test_without_final_pt_the_stored_digest_is_checked(runs, tmp_path):
    run = tmp_path / "moved-away"
    shutil.copytree(runs["bn"], run)
    export(run, tmp_path / "bn.bnc")
    final = _load(run / "final.pt")
    shutil.rmtree(run)
    loaded = bnonly.load_compact(tmp_path / "bn.bnc")
    assert loaded.checked_against == "bit for bit against the SHA-256 of final.pt stored at export"
    assert _bits_equal(loaded.state, final)
    # Another seed rebuilds other frozen weights: the digest catches it.
    _rewrite(tmp_path / "bn.bnc", tmp_path / "seed1.bnc", lambda p: p["config"].update(seed=1))
    with pytest.raises(CompactError, match=r"differs from the exported run's final.pt \(SHA-256 of the state\); its "
                                           r"frozen weights do not re-derive from the seed with torch"):
        bnonly.load_compact(tmp_path / "seed1.bnc")


def test_a_final_pt_given_is_checked_and_the_first_mismatch_named(runs, tmp_path):
    export(runs["bn"], tmp_path / "bn.bnc")
    assert bnonly.load_compact(tmp_path / "bn.bnc", final=runs["bn"]).checked_against.endswith("final.pt")
    with pytest.raises(CompactError, match=r"does not rebuild .*bn-output.*final.pt bit for bit: "
                                           r"(\S+) differs in [\d,]+ of [\d,]+ entries"):
        bnonly.load_compact(tmp_path / "bn.bnc", final=runs["bn+output"] / "final.pt")
    with pytest.raises(CompactError, match=r"final.pt to check against: .*nowhere.pt does not exist"):
        bnonly.load_compact(tmp_path / "bn.bnc", final=tmp_path / "nowhere.pt")


def test_import_makes_a_run_folder_that_evaluates_the_same(runs, tmp_path):
    run = runs["random-per-channel:2"]
    export(run, tmp_path / "r.bnc")
    out = import_run(tmp_path / "r.bnc", tmp_path / "imported")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "final.pt", "init.pt", "summary.json"]
    summary, original = (json.loads((d / "summary.json").read_text()) for d in (out, run))
    assert summary["status"] == "done" and summary["run_dir"] == str(out)
    assert "imported from the compact file" in summary["imported"]["note"]
    assert {k: v for k, v in summary.items() if k not in ("run_dir", "imported")} == \
        {k: v for k, v in original.items() if k != "run_dir"}
    assert json.loads((out / "config.json").read_text()) == json.loads((run / "config.json").read_text())
    assert _bits_equal(_load(out / "final.pt"), _load(run / "final.pt"))
    assert _bits_equal(_load(out / "init.pt"), _load(run / "init.pt"))

    def accuracy(folder: Path) -> dict:
        cfg = bnonly.load_run(folder).config
        model = bnonly.create_model(cfg.model, 4, seed=None)
        model.load_state_dict(_load(folder / "final.pt"))
        batches = make_batches(open_dataset(cfg.data).test, batch_size=64, train=False, seed=0, device="cpu",
                               augment="none", normalize=cfg.normalize, channels_last=False)
        return evaluate(model, batches, bf16=False, device=torch.device("cpu"))

    imported = accuracy(out)
    assert imported == accuracy(run)
    assert imported["test_acc"] == pytest.approx(original["test_acc"], abs=1 / 128)  # at most one image flips
    assert main(["analyze", str(out), "--no-figures"]) == 0 and (out / "analysis.json").is_file()


def test_cli_export_and_import_print_sizes(runs, tmp_path, capsys):
    assert main(["export", str(runs["bn"]), "--compact", str(tmp_path / "bn.bnc")]) == 0
    line = capsys.readouterr().out
    assert f"{(tmp_path / 'bn.bnc').stat().st_size:,} bytes" in line and "336 trained numbers" in line
    assert "345 numbers of 27 buffers (BatchNorm running statistics" in line and "note:" not in line
    assert main(["export", str(runs["all"]), "--compact", str(tmp_path / "all.bnc")]) == 0
    assert "this file is not compact: it is final.pt in another form" in capsys.readouterr().out
    assert main(["import", str(tmp_path / "bn.bnc"), "--out", str(tmp_path / "in")]) == 0
    assert f"-> {tmp_path / 'in'}" in capsys.readouterr().out


def _rewrite(src: Path, dst: Path, change) -> None:
    """A compact file with a changed payload and a valid checksum (what a foreign or future file looks like)."""
    payload = read_compact(src)
    change(payload)
    write_compact(dst, payload)


@pytest.mark.parametrize("make,match", [
    (lambda f, d: d / "missing.bnc", r"compact file .*missing.bnc does not exist"),
    (lambda f, d: d / "run" / "final.pt", (r"final.pt is not a bnonly compact file \(it does not start with "
                                           r"'bnonly-compact sha256='\); make one with `bnonly export")),
    (lambda f, d: _damaged(f, d, lambda b: b[:-1] + bytes([b[-1] ^ 1])), r"is damaged: its content does not match"),
    (lambda f, d: _damaged(f, d, lambda b: b[:len(b) // 2]), r"is damaged: its content does not match"),
    (lambda f, d: _edited(f, d, lambda p: p.update(format=99)), r"compact file format 99, written by a newer bnonly"),
    (lambda f, d: _edited(f, d, lambda p: p.pop("digest")), r"lacks digest; it was not written by `bnonly export`"),
    (lambda f, d: _edited(f, d, lambda p: p["config"].update(model="cifar_resnet_7")),
     r"its model 'cifar_resnet_7' is not one this bnonly builds \(`bnonly models` lists them\)"),
    (lambda f, d: _edited(f, d, lambda p: p["config"].update(new_field=1)),
     r"its config has field\(s\) new_field that this bnonly does not know \(made by a newer version\?\)"),
    (lambda f, d: _edited(f, d, lambda p: p["config"].update(train="bn+output")),
     r"holds fewer float32 numbers than its run's model needs"),
    (lambda f, d: _edited(f, d, lambda p: p["config"].update(train="gamma")),
     r"holds more numbers than its run's model needs"),
])
def test_bad_files_are_one_clear_error(runs, tmp_path, capsys, make, match):
    shutil.copytree(runs["bn"], tmp_path / "run")
    export(tmp_path / "run", tmp_path / "good.bnc")
    bad = make(tmp_path / "good.bnc", tmp_path)
    with pytest.raises(CompactError, match=match):
        bnonly.load_compact(bad)
    assert main(["import", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnonly import: error: ") and err.count("\n") == 1 and not (tmp_path / "out").exists()


def _damaged(good: Path, folder: Path, damage) -> Path:
    bad = folder / "damaged.bnc"
    bad.write_bytes(damage(good.read_bytes()))
    return bad


def _edited(good: Path, folder: Path, change) -> Path:
    bad = folder / "edited.bnc"
    _rewrite(good, bad, change)
    return bad


def test_runs_that_cannot_be_exported(runs, tmp_path):
    shutil.copytree(runs["bn"], tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (tmp_path / "run" / "summary.json").write_text(json.dumps(dict(summary, status="failed")))
    with pytest.raises(CompactError, match=r"has not finished \(failed\); launch it again to finish it"):
        export(tmp_path / "run", tmp_path / "x.bnc")
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(CompactError, match=r"has not finished \(no summary.json\)"):
        export(tmp_path / "run", tmp_path / "x.bnc")
    with pytest.raises(CompactError, match=r"is not a run folder \(no config.json\)"):
        export(tmp_path, tmp_path / "x.bnc")
    assert not (tmp_path / "x.bnc").exists()


def test_frozen_weights_that_do_not_re_derive_are_refused_at_export(runs, tmp_path):
    shutil.copytree(runs["bn"], tmp_path / "run")
    final = _load(tmp_path / "run" / "final.pt")
    final["conv.weight"] = final["conv.weight"] + 1  # a frozen tensor no seed gives
    torch.save(final, tmp_path / "run" / "final.pt")
    with pytest.raises(CompactError, match=r"its frozen weights are not re-derivable from its seed and spec here "
                                           r"\(conv.weight differs in 216 of 216 entries\)"):
        export(tmp_path / "run", tmp_path / "x.bnc")


def test_import_refuses_a_used_folder(runs, tmp_path):
    export(runs["bn"], tmp_path / "bn.bnc")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(CompactError, match=r"--out .*used already exists and is not an empty folder"):
        import_run(tmp_path / "bn.bnc", tmp_path / "used")
    assert sorted(p.name for p in (tmp_path / "used").iterdir()) == ["notes.txt"]


def test_a_run_started_from_another_needs_that_run(runs, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(runs["bn"], source)
    cfg = bnonly.TrainConfig(**{**TINY, "out": str(tmp_path / "runs"), "train": "bn+output", "init_from": str(source)})
    run = Path(bnonly.train(cfg, **QUIET)["run_dir"])
    export(run, tmp_path / "from.bnc")
    assert _bits_equal(bnonly.load_compact(tmp_path / "from.bnc").state, _load(run / "final.pt"))
    shutil.rmtree(source)
    with pytest.raises(CompactError, match=r"the run started from the weights of init_from=.*source', which must "
                                           r"be there to rebuild its frozen weights"):
        bnonly.load_compact(tmp_path / "from.bnc")
