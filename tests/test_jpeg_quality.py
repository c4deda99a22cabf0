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
    assert sweep["grid"]["train"] == ["all"] and sweep["base"]["milestones"] == [7.5, 11.25]
    assert json.loads((tmp_path / "out" / "psnr.json").read_text())["copies"]["q10"]["quality"] == 10


def test_report_puts_each_run_beside_its_copy_and_its_change_per_spec(tmp_path):
    _png_folder(tmp_path / "src")
    out = tmp_path / "out"
    jpeg_quality.prepare(str(tmp_path / "src"), out, [50], lossless=False, train=("all", "bn"))
    sweep = yaml.safe_load((out / "sweep.yaml").read_text())
    assert sweep["grid"]["data"][0] == str((tmp_path / "src").resolve())  # the source itself is the reference
    assert sweep["grid"]["train"] == ["all", "bn"]
    accuracy = {("all", 0): 0.5, ("all", 1): 0.4, ("bn", 0): 0.3, ("bn", 1): 0.295}
    for (train, i), acc in accuracy.items():
        run = out / "runs" / f"{train}{i}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"data": sweep["grid"]["data"][i], "epochs": 15, "train": train}))
        (run / "summary.json").write_text(json.dumps({"status": "done", "test_acc": acc, "wall_seconds": 1}))
        (run / "metrics.jsonl").write_text("{}\n")
    table = jpeg_quality.report(out, tmp_path / "results").splitlines()
    assert table[2].startswith("| `all` | source (as shared) | 75 | — |")
    assert table[2].endswith("| 50.00% | +0.00 | 15 |")
    assert table[3].startswith("| `all` | q50 | 50 |") and table[3].endswith("| 40.00% | -10.00 | 15 |")
    assert table[4].startswith("| `bn` | source (as shared) |") and table[5].endswith("| 29.50% | -0.50 | 15 |")
    assert sorted(p.name for p in (tmp_path / "results" / "runs").iterdir()) == ["all0", "all1", "bn0", "bn1"]


def test_prepare_refuses_an_unknown_spec_before_encoding_anything(tmp_path):
    _png_folder(tmp_path / "src")
    with pytest.raises(SystemExit, match="--train: unknown what-trains term 'bogus'"):
        jpeg_quality.prepare(str(tmp_path / "src"), tmp_path / "out", [50], lossless=False, train=("bn", "bogus"))
    assert not (tmp_path / "out").exists()
