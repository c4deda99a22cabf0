"""``bnonly bench``: its two pipelines, its counts, its measurements and its report."""

import json

import numpy as np
import pytest
import torch

from bnonly.bench import BenchError, PilImages, count_step_flops, format_report, matmul_peak, paired_speedup, run
from bnonly.cli import main
from bnonly.config import TrainConfig
from bnonly.data import make_batches, open_dataset

DATA = "synthetic:train=128,test=32,classes=4,size=32"
QUICK = dict(warmup=1, windows=2, steps=1, peak_budget_s=0.05, log=lambda *a, **k: None)


def _cfg(**kw):
    return TrainConfig(**{**dict(model="cifar_resnet_8_8", data=DATA, batch_size=16, device="cpu"), **kw})


def test_conventional_images_match_the_device_pipeline():
    split = open_dataset(DATA).train
    plain = PilImages(split, "imagenet", augment=False)
    dev = make_batches(split, batch_size=8, train=False, seed=0, device="cpu", augment="none",
                       normalize="imagenet", channels_last=False)
    x, y = next(iter(dev.batches(0)))
    for i in range(8):
        xi, yi = plain[i]
        assert yi == int(y[i]) and torch.allclose(xi, x[i], atol=1e-5)


def test_conventional_augmentation_is_a_padded_crop_or_its_mirror():
    split = open_dataset(DATA).train
    plain, aug = PilImages(split, "none", augment=False), PilImages(split, "none", augment=True)
    torch.manual_seed(0)
    for i in range(6):
        base, out = plain[i][0], aug[i][0]
        padded = torch.nn.functional.pad(base, (4, 4, 4, 4))
        candidates = [c for r in range(9) for s in range(9) for c in (padded[:, r:r + 32, s:s + 32],
                                                                      padded[:, r:r + 32, s:s + 32].flip(2))]
        assert any(torch.equal(out, c) for c in candidates)


@pytest.mark.parametrize("spec", ["bn", "all", "none"])
def test_flops_count_only_the_gradients_a_step_computes(spec):
    f = count_step_flops(_cfg(model="cifar_resnet_20", batch_size=128, train=spec), 10, (3, 32, 32))
    stem = 2 * 3 * 16 * 9 * 32 * 32  # the first conv: its input needs no gradient
    assert f["forward"] == 81_626_368
    expected = {"bn": 2 * f["forward"] - stem, "all": 3 * f["forward"] - stem, "none": f["forward"]}
    assert f["step"] == expected[spec]


def test_paired_speedup_is_the_median_of_window_ratios():
    assert paired_speedup([200, 100, 300], [100, 100, 100]) == 2.0
    assert paired_speedup([100, 50], [50, 50]) == 1.5


def test_matmul_peak_measures_a_rate():
    peak = matmul_peak(torch.device("cpu"), torch.float32, budget_s=0.05)
    assert peak["flops_per_s"] > 1e8 and peak["size"] >= 256


@pytest.mark.compute
def test_bench_runs_both_pipelines_and_shows_the_bn_only_evidence():
    r = run(_cfg(train="bn"), threads=1, profile=True, **QUICK)
    fast, conv = r["rows"][0], r["rows"][1]
    assert [row["pipeline"] for row in r["rows"]][:2] == ["fast", "conventional"]
    assert fast["threads"] == 1 and len(fast["windows"]) == 2 and fast["images_per_s"] > 0
    ratios = sorted(f / c for f, c in zip(fast["windows"], conv["windows"]))
    assert r["speedup"] == pytest.approx((ratios[0] + ratios[1]) / 2, rel=0.01, abs=0.006)  # median of pairs
    # images_per_s is rounded to 0.1 after achieved_gflops was computed from the exact rate
    assert fast["achieved_gflops"] == pytest.approx(r["flops_per_image"] * fast["images_per_s"] / 1e9, abs=0.011)
    assert fast["fraction_of_float32_peak"] == pytest.approx(
        fast["achieved_gflops"] / r["matmul_peak_gflops"]["float32"], rel=0.02, abs=1e-3)
    assert fast["peak_mib"] > 0 and conv["peak_mib"] > 0
    e = r["profile"]
    convs = 9  # cifar_resnet_8: stem, 3 blocks x 2, 2 shortcuts; the stem's input needs no gradient
    assert e["conv_backward_by_mask"] == {"[True, False, False]": convs - 1}
    assert e["optimizer_tensors"] == e["trainable_tensors"] < e["parameter_tensors"]
    assert e["frozen_with_grad"] == 0 and e["frozen_weight_casts"] == 0


def test_bench_all_computes_weight_gradients_and_picks_threads():
    r = run(_cfg(train="all"), threads="auto", conventional=False, profile=True, **QUICK)
    assert [row["pipeline"] for row in r["rows"]] == ["fast"]
    assert set(r["thread_trials"]) == {str(n) for n in range(1, len(r["thread_trials"]) + 1)}
    assert r["rows"][0]["threads"] == int(max(r["thread_trials"], key=r["thread_trials"].get))
    assert r["profile"]["conv_backward_by_mask"] == {"[True, True, False]": 8, "[False, True, False]": 1}


def test_bench_command_prints_and_appends_json(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    args = ["bench", "--model", "cifar_resnet_8_8", "--data", DATA, "--batch-size", "16", "--device", "cpu",
            "--threads", "1", "--warmup", "1", "--windows", "1", "--steps", "1", "--peak-seconds", "0.05",
            "--quiet", "--json", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "fast / conventional (median of paired windows):" in text and "counted FLOPs/image" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["model"] == "cifar_resnet_8_8" and rows[0]["train"] == "bn"
    assert main(args[:-2] + ["--threads", "0"]) == 2
    assert "--threads expects" in capsys.readouterr().err


def test_bench_times_the_fused_kernel_against_the_plain_modules():
    r = run(_cfg(train="bn", fused_norm=True), threads=1, conventional=False, unfused=True, **QUICK)
    assert r["fused_norm"] is True and [row["pipeline"] for row in r["rows"]] == ["fast", "fast-unfused"]
    fast, plain = r["rows"]
    ratios = sorted(f / p for f, p in zip(fast["windows"], plain["windows"]))
    assert r["speedup_fused"] == pytest.approx(sum(ratios) / 2, rel=0.01, abs=0.006) and "speedup" not in r
    assert "fast / fast-unfused (the fused norm-act kernel" in format_report(r)
    unfused_only = run(_cfg(train="bn", fused_norm=False), threads=1, conventional=False, unfused=True, **QUICK)
    assert [row["pipeline"] for row in unfused_only["rows"]] == ["fast"]  # nothing to compare against


def test_bench_times_the_fast_path_compiled_instead_of_the_kernel(monkeypatch):
    compiled = []  # the eager backend: what is tested is that the second pipeline was compiled
    monkeypatch.setattr("bnonly.speed.compile_options",
                        lambda device, capture=False: compiled.append(device) or {"backend": "eager"})
    r = run(_cfg(train="bn", fused_norm=True), threads=1, conventional=False, compiled=True, **QUICK)
    assert len(compiled) == 1
    assert [row["pipeline"] for row in r["rows"]] == ["fast", "fast-compiled"] and r["fused_norm"] is True
    fast, comp = r["rows"]
    ratios = sorted(f / c for f, c in zip(fast["windows"], comp["windows"]))
    assert r["speedup_over_compiled"] == pytest.approx(sum(ratios) / 2, rel=0.01, abs=0.006)
    assert "fast / fast-compiled (torch.compile instead" in format_report(r)
    already = run(_cfg(train="bn", compile=True, fused_norm=False), threads=1, conventional=False, compiled=True,
                  **QUICK)
    assert [row["pipeline"] for row in already["rows"]] == ["fast"] and already["compile"] is True


def test_bench_says_whether_a_streamed_folder_is_bound_by_data_or_compute(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n // 2):
                size = (int(rng.integers(40, 56)), int(rng.integers(40, 56)))
                Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.jpg")
    cfg = _cfg(data=str(tmp_path), image_size=32, batch_size=8, num_workers=0, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(BenchError, match="streams from disk: use --no-conventional"):
        run(cfg, threads=1, **QUICK)
    r = run(cfg, threads=1, conventional=False, **QUICK)
    assert r["data_images_per_s"] > 0
    report = format_report(r)
    bound = "data" if r["data_images_per_s"] < 1.5 * r["rows"][0]["images_per_s"] else "compute"
    assert f"data path alone: {r['data_images_per_s']:.0f} img/s against" in report and f"{bound}-bound" in report
