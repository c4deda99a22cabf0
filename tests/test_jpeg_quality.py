"""benchmarks/jpeg_quality.py: re-encoded copies of a dataset, their PSNR, the sweep, the table."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import bnonly

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "jpeg_quality.py"
spec = importlib.util.spec_from_file_location("jpeg_quality", SCRIPT)
jpeg_quality = importlib.util.module_from_spec(spec)
spec.loader.exec_module(jpeg_quality)


def _png_folder(root: Path, per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                smooth = np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((8, 8, 1))).astype(np.uint8)
                Image.fromarray(smooth).save(root / split / cls / f"{i}.png")


def test_psnr_known_values():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert jpeg_quality.psnr(a, a) == math.inf
    assert abs(jpeg_quality.psnr(a, a + 1) - 10 * math.log10(255**2)) < 1e-9  # MSE 1


def test_prepare_writes_each_copy_with_its_psnr_and_a_sweep_over_them(tmp_path):
    _png_folder(tmp_path / "src")
    measured = jpeg_quality.prepare(str(tmp_path / "src"), tmp_path / "out", [90, 10], lossless=True)
    copies = measured["copies"]
    assert list(copies) == ["lossless", "q90", "q10"]
    assert copies["lossless"]["psnr_test"] == math.inf
    assert math.inf > copies["q90"]["psnr_train"] > copies["q10"]["psnr_train"] > 10  # lower quality, lower PSNR
    for name, suffix in (("lossless", "png"), ("q90", "jpg")):
        assert len(list((tmp_path / "out" / name / "train").rglob(f"*.{suffix}"))) == 6
        reopened = bnonly.open_dataset(copies[name]["folder"], cache_dir=str(tmp_path / "cache"))
        assert reopened.classes == ["cat", "dog"] and len(reopened.test.labels) == 6
    sweep = yaml.safe_load((tmp_path / "out" / "sweep.yaml").read_text())
    assert sweep["grid"]["data"] == [c["folder"] for c in copies.values()]  # --lossless: the copies only
    assert sweep["grid"]["train"] == ["all"] and sweep["grid"]["seed"] == [0]
    assert sweep["base"]["milestones"] == [7.5, 11.25]
    assert json.loads((tmp_path / "out" / "psnr.json").read_text())["copies"]["q10"]["quality"] == 10


def test_report_puts_each_run_beside_its_copy_and_its_change_per_spec(tmp_path):
    _png_folder(tmp_path / "src")
    out = tmp_path / "out"
    jpeg_quality.prepare(str(tmp_path / "src"), out, [50], lossless=False, train=("all", "bn"))
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["grid"]["data"][0] == str((tmp_path / "src").resolve())  # the source itself is the reference
    assert sweep["grid"]["train"] == ["all", "bn"]
    source, q50 = sweep["grid"]["data"]
    _fake_runs(out, {("all", 0, source): 0.5, ("all", 0, q50): 0.4, ("bn", 0, source): 0.3, ("bn", 0, q50): 0.295})
    table = jpeg_quality.report(out, tmp_path / "results").splitlines()
    assert table[2].startswith("| `all` | 0 | source (as shared) | 75 | — |")
    assert table[2].endswith("| 50.00% | +0.00 | 15 |")
    assert table[3].startswith("| `all` | 0 | q50 | 50 |") and table[3].endswith("| 40.00% | -10.00 | 15 |")
    assert table[4].startswith("| `bn` | 0 | source (as shared) |") and table[5].endswith("| 29.50% | -0.50 | 15 |")
    assert len(table) == 6  # one seed each: no table over seeds
    copied = sorted(p.name for p in (tmp_path / "results" / "runs").iterdir())
    assert copied == ["all.s0.0", "all.s0.1", "bn.s0.2", "bn.s0.3"]


def _fake_runs(out: Path, accuracy: dict) -> None:
    """A done run per (spec, seed, data folder) -> test accuracy, as `bnonly sweep` leaves them."""
    for i, ((train, seed, data), acc) in enumerate(accuracy.items()):
        run = out / "runs" / f"{train}.s{seed}.{i}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"data": data, "epochs": 15, "train": train, "seed": seed}))
        (run / "summary.json").write_text(json.dumps({"status": "done", "test_acc": acc, "wall_seconds": 1}))
        (run / "metrics.jsonl").write_text("{}\n")


def test_prepare_again_adds_seeds_and_keeps_what_was_measured_and_report_pairs_each_seed(tmp_path):
    _png_folder(tmp_path / "src")
    out = tmp_path / "out"
    first = jpeg_quality.prepare(str(tmp_path / "src"), out, [50, 30], lossless=False, train=("all",))
    source = str((tmp_path / "src").resolve())
    q50, q30 = first["copies"]["q50"]["folder"], first["copies"]["q30"]["folder"]
    again = jpeg_quality.prepare(str(tmp_path / "src"), out, [30], lossless=False, train=("all",), seeds=(1,))
    assert again["copies"] == first["copies"]  # q50 kept, q30 measured the same again
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["grid"] == {"data": [source, q30], "train": ["all"], "seed": [1]}  # only what was asked now
    _fake_runs(out, {("all", 0, source): 0.80, ("all", 0, q50): 0.78, ("all", 0, q30): 0.77,
                     ("all", 1, source): 0.82, ("all", 1, q30): 0.78})
    lines = jpeg_quality.report(out, tmp_path / "results").splitlines()
    assert lines[2].startswith("| `all` | 0 | source (as shared) |") and lines[4].endswith("| 77.00% | -3.00 | 15 |")
    assert lines[5].startswith("| `all` | 1 | source (as shared) |")
    assert lines[6].startswith("| `all` | 1 | q30 |")
    assert lines[6].endswith("| 78.00% | -4.00 | 15 |")  # against seed 1's own q75 run
    header = "| what trains | copy | seeds | test acc (%), mean ± std | change (points), mean ± std |"
    over_seeds = lines[lines.index(header):]
    assert "| `all` | q30 | 0, 1 | 77.50 ± 0.71 | -3.50 ± 0.71 |" in over_seeds
    assert "| `all` | q50 | 0 | 78.00 | -2.00 |" in over_seeds
    with pytest.raises(SystemExit, match="holds copies of"):
        _png_folder(tmp_path / "other")
        jpeg_quality.prepare(str(tmp_path / "other"), out, [30], lossless=False)


def test_prepare_refuses_an_unknown_spec_before_encoding_anything(tmp_path):
    _png_folder(tmp_path / "src")
    with pytest.raises(SystemExit, match="--train: unknown what-trains term 'bogus'"):
        jpeg_quality.prepare(str(tmp_path / "src"), tmp_path / "out", [50], lossless=False, train=("bn", "bogus"))
    assert not (tmp_path / "out").exists()
