"""Training runs end to end on synthetic data: run folder, resume, failures, CLI."""

import json
import subprocess
import sys

import conftest
import pytest
import torch
from conftest import QUIET, SignalAt

from bnonly.cli import main
from bnonly.config import TrainConfig
from bnonly.models import create_model
from bnonly.rundir import RunDir
from bnonly.training import Interrupted, TrainingFailed, train

TINY = dict(conftest.TINY, epochs=3, milestones=(1, 2), schedule_epochs=3)


def tiny(tmp_path, **kw):
    return TrainConfig(**{**TINY, "out": str(tmp_path / "runs"), **kw})


@pytest.mark.compute
def test_run_folder_holds_everything(tmp_path):
    cfg = tiny(tmp_path, train="bn")
    summary = train(cfg, log=lambda *_: None)
    run = RunDir(summary["run_dir"])
    assert run.path.name == cfg.run_name
    assert json.loads(run.config.read_text()) == {"format": 3, **cfg.to_dict()}
    metrics = run.read_metrics()
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    for key in ("run_id", "model", "train", "seed", "epochs", "test_acc", "test_top5", "trainable_params",
                "total_params", "wall_seconds", "images_per_second"):
        assert key in summary
    assert summary["status"] == "done" and 0 <= summary["test_acc"] <= summary["test_top5"] <= 1
    assert summary["test_acc"] == metrics[-1]["test_acc"]
    assert summary["trainable_params"] == summary["bn_params"]
    plain = create_model("cifar_resnet_8_8", 4)
    init, final = torch.load(run.init_weights), torch.load(run.final_weights)
    plain.load_state_dict(init)
    plain.load_state_dict(final)
    fresh = create_model("cifar_resnet_8_8", 4, seed=0).state_dict()
    assert all(torch.equal(init[k], fresh[k]) for k in fresh if "running" not in k and "num_batches" not in k)
    changed = {k for k in final if not torch.equal(init[k], final[k])}
    assert changed and all(k.split(".")[-1] in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
                           for k in changed)
    assert not any(k.endswith("conv1.weight") or k == "fc.weight" for k in changed)  # frozen under 'bn'


@pytest.mark.compute
def test_bn_only_learns_the_synthetic_task(tmp_path):
    summary = train(tiny(tmp_path, model="cifar_resnet_8_16", train="bn", epochs=6, milestones=(), lr=0.2),
                    log=lambda *_: None)
    assert summary["test_acc"] > 0.5  # 4 classes: chance is 0.25


def test_random_subset_run_keeps_frozen_entries(tmp_path):
    summary = train(tiny(tmp_path, train="random-per-channel:2", epochs=1), log=lambda *_: None)
    run = RunDir(summary["run_dir"])
    init, final = torch.load(run.init_weights), torch.load(run.final_weights)
    w0, w1 = init["fc.weight"], final["fc.weight"]
    assert int((w0 != w1).sum()) == 2 * w0.shape[0]  # exactly the 2 chosen entries per row moved
    assert summary["trainable_params"] < summary["bn_params"] * 2


def test_finished_run_is_reported_not_retrained(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    first = train(cfg, log=lambda *_: None)
    messages = []
    again = train(cfg, log=messages.append)
    assert again == first and "already finished" in messages[0]


@pytest.mark.compute
def test_interrupted_run_resumes_to_identical_result(tmp_path):
    straight = train(tiny(tmp_path / "a"), log=lambda *_: None)

    cfg = tiny(tmp_path / "b")
    with pytest.raises(Interrupted, match="SIGINT at step 11"):
        train(cfg, callbacks=[SignalAt({11})], **QUIET)
    run = RunDir(tmp_path / "b" / "runs" / cfg.run_name)
    assert run.checkpoint.exists() and not run.summary.exists()
    resumed = train(cfg, log=lambda *_: None)

    a, b = RunDir(straight["run_dir"]), RunDir(resumed["run_dir"])
    fa, fb = torch.load(a.final_weights), torch.load(b.final_weights)
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_seconds", "images_per_second")} for r in rows]
    assert strip(a.read_metrics()) == strip(b.read_metrics())


def test_nan_loss_stops_and_is_recorded(tmp_path):
    cfg = tiny(tmp_path, train="all", lr=1e6, epochs=2)
    with pytest.raises(TrainingFailed, match="non-finite"):
        train(cfg, log=lambda *_: None)
    summary = RunDir(tmp_path / "runs" / cfg.run_name).read_summary()
    assert summary["status"] == "failed" and "non-finite" in summary["reason"]


def test_cli_train_and_errors(tmp_path, capsys):
    args = ["train", "--model", "cifar_resnet_8_8", "--train", "bn", "--epochs", "1", "--seed", "0",
            "--data", TINY["data"], "--batch-size", "32", "--out", str(tmp_path), "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert "test_acc" in capsys.readouterr().out
    assert main(args[:2] + ["cifar_resnet_9"] + args[3:]) == 2
    assert "6n+2" in capsys.readouterr().err
    assert main(args[:4] + ["bn+gama"] + args[5:]) == 2
    assert "'gama'" in capsys.readouterr().err
    assert main(args + ["--preset", "cifar11"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err


def test_cli_info_json(capsys):
    assert main(["info", "cifar_resnet_14", "--train", "bn", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["total_params"], info["trainable_params"], info["bn_params"], info["output_params"]) == \
        (175258, 1120, 1120, 650)
    assert main(["info", "cifar_resnet_14", "--train", "random:matched", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == 1120


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "bnonly", "models"], capture_output=True, text=True, check=True)
    assert "cifar_resnet" in out.stdout and "imagenet_resnet" in out.stdout


def test_streamed_imagenet_style_folder_trains(tmp_path):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("val", 6)):
        for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                size = (40 + 4 * (i % 3), 36 + 2 * (i % 4))  # mixed sizes: streamed, not cached
                noise = torch.randint(0, 40, (size[1], size[0], 3), generator=gen, dtype=torch.uint8)
                pixels = (torch.tensor(colour, dtype=torch.uint8) + noise).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = TrainConfig(model="imagenet_resnet_18_8", data=str(tmp_path / "data"), image_size=32, batch_size=8,
                      epochs=2, augment="auto", num_workers=0, progress=False, device="cpu",
                      out=str(tmp_path / "runs"), train="bn+output", lr=0.05)
    summary = train(cfg, log=lambda *_: None)
    metrics = RunDir(summary["run_dir"]).read_metrics()
    assert summary["status"] == "done" and len(metrics) == 2
    assert metrics[0]["step"] == 3 and summary["steps"] == 6  # 24 images, batch 8, drop_last
    assert summary["total_params"] == sum(p.numel() for p in create_model("imagenet_resnet_18_8", 2).parameters())


@pytest.mark.compute
def test_compiled_model_is_evaluated_eagerly():
    """Evaluation must not make torch.compile build a second (eval-mode, test-batch) model."""
    from bnonly.data import make_batches, open_dataset
    from bnonly.training import evaluate

    torch.manual_seed(0)
    data = open_dataset("synthetic:train=64,test=48,classes=4,size=16")
    test = make_batches(data.test, batch_size=20, train=False, seed=0, device="cpu", augment="none",
                        normalize="imagenet", channels_last=False)
    x = torch.randn(8, 3, 16, 16)
    reference = create_model("cifar_resnet_8_8", 4, seed=0)
    reference(x)  # the same running-statistics update the compiled model gets below
    expected = evaluate(reference, test, bf16=False, device=torch.device("cpu"))
    model = create_model("cifar_resnet_8_8", 4, seed=0)

    compiled_graphs = []

    def counting_backend(gm, example_inputs):
        compiled_graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model.compile(backend=counting_backend)
    model.train()
    model(x).sum().backward()
    assert len(compiled_graphs) == 1
    got = evaluate(model, test, bf16=False, device=torch.device("cpu"))
    assert len(compiled_graphs) == 1, "evaluation compiled another graph"
    assert model.training
    assert got["test_acc"] == expected["test_acc"]
    assert got["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)
    torch._dynamo.reset()


def test_thin_strided_1x1_conv_trains_in_nchw_on_the_cpu(tmp_path):
    """A width-4 ResNet's downsampling shortcut (1x1, stride 2, 4 input channels) corrupts the heap
    in channels_last backward on the CPU (PyTorch 2.13, one thread): such models fall back to NCHW.
    Only the automatic choice falls back: asking for channels_last explicitly is an error."""
    from bnonly.config import ConfigError
    from bnonly.training import build

    assert build(tiny(tmp_path, model="cifar_resnet_8_4")).channels_last is False
    assert build(tiny(tmp_path)).channels_last is True  # width 8: the fast default stays
    with pytest.raises(ConfigError,
                       match="corrupts memory on the CPU.*so it trains in NCHW there: use --no-channels-last$"):
        build(tiny(tmp_path, model="cifar_resnet_8_4", channels_last=True))
    # In a child process, since the bug crashes the interpreter: one thread, backward through the shortcut.
    # Without the fallback this run ends in a segfault (exit 139), measured.
    done = subprocess.run([sys.executable, "-m", "bnonly", "train", "--model", "cifar_resnet_8_4", "--train", "all",
                           "--data", "synthetic:train=1024,test=64,classes=4,size=32", "--epochs", "3",
                           "--batch-size", "64", "--threads", "1", "--augment", "none", "--no-progress",
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["status"] == "done" and summary["compute"]["channels_last"] is False
