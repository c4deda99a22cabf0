"""supermask:P (edge-popup, Ramanujan et al. 2020): trainable scores per conv/linear weight, each layer's
top P% by |score| used, the weights themselves frozen bit for bit; composed with the other terms, resumed,
exported compactly, analysed, and refused when malformed."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch
from conftest import DATA, QUIET, TINY, SignalAt
from torch import nn

import bnonly
from bnonly.analysis import AnalysisContext, analyze_run
from bnonly.analysis.builtin import NOT_SUPERMASK
from bnonly.analysis.builtin import supermask as supermask_section
from bnonly.cli import main
from bnonly.compact import export, import_run, read_compact
from bnonly.config import from_dict, load_file
from bnonly.data import make_batches, open_dataset
from bnonly.layers import BATCHNORM_TYPES, affine_params, bn_param_count, weight_layers
from bnonly.models import create_model
from bnonly.rundir import RunDir
from bnonly.trainable import (
    SpecError,
    configure,
    count_trainable,
    kept_count,
    plain_state_dict,
    select,
    supermasks,
    trainable_parameters,
)
from bnonly.training import Interrupted, evaluate
from bnonly.training.build import build_model

SMALL = "synthetic:train=64,test=32,classes=4,size=16"


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every conv/linear weight's frozen values (the parametrization's original under a supermask)."""
    out = {}
    for name, layer in weight_layers(model):
        plist = getattr(getattr(layer, "parametrizations", None), "weight", None)
        out[name] = (plist.original if plist is not None else layer.weight).detach().clone()
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


# ---------------------------------------------------------------- the mask and its gradient

@pytest.mark.parametrize("percent", ["50", "12.5", "1", "100"])
def test_each_layer_keeps_exactly_its_share(percent):
    model = create_model("cifar_resnet_8_8", 4, seed=0)
    frozen = _weights(model)
    configure(model, f"supermask:{percent}", seed=0)
    masks = supermasks(model)
    assert list(masks) == [f"{n}.weight" for n, _ in weight_layers(model)]  # every conv and linear, output too
    for name, layer in weight_layers(model):
        n = layer.weight.numel()
        keep = math.ceil(n * float(percent) / 100)
        assert masks[f"{name}.weight"].keep == keep == kept_count(n, percent)
        mask = masks[f"{name}.weight"].mask()
        assert int(mask.sum()) == keep and set(mask.unique().tolist()) <= {0.0, 1.0}
        # the kept entries are the top |score|s, and the forward pass uses exactly them, unchanged
        scores = masks[f"{name}.weight"].scores.detach().abs().reshape(-1)
        kept = mask.reshape(-1).bool()
        if keep < n:
            assert scores[kept].min() > scores[~kept].max()
        effective = layer.weight.detach()
        assert torch.equal(effective[mask.bool()], frozen[name][mask.bool()])
        assert int((effective != 0).sum()) == keep
    if percent == "50":  # 8 -> 8 3x3 convs: 576 weights, exactly half kept
        assert masks["blocks.0.conv1.weight"].keep == 288


def test_straight_through_gradient_is_the_analytic_one():
    torch.manual_seed(3)
    layer = nn.Linear(5, 3, bias=False)
    w = layer.weight.detach().clone()
    configure(layer, "supermask:40", seed=7)
    m = supermasks(layer)["weight"]
    s = m.scores.detach().clone()
    assert m.keep == 6  # ceil(15 * 0.4)
    x, g = torch.randn(4, 5), torch.randn(4, 3)
    (layer(x) * g).sum().backward()
    mask = m.mask().detach()
    grad_effective = g.t() @ x  # dL/dW_eff for out = x W_eff^T
    # straight through the top-k: dL/d|s| = dL/dW_eff * W, and d|s|/ds = sign(s)
    torch.testing.assert_close(m.scores.grad, torch.sign(s) * grad_effective * w, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), x @ (w * mask).t(), rtol=0, atol=0)
    assert layer.parametrizations.weight.original.grad is None


def test_scores_are_edge_popups_kaiming_uniform_from_the_selection_seed():
    model = create_model("cifar_resnet_8_8", 4, seed=0)
    a = select(model, "supermask:50", seed=0).scored
    b = select(model, "supermask:50", seed=0).scored
    c = select(model, "supermask:50", seed=1).scored
    name = "blocks.0.conv1.weight"
    assert all(torch.equal(a[n].scores, b[n].scores) for n in a)
    assert not torch.equal(a[name].scores, c[name].scores)
    bound = 1 / math.sqrt(8 * 3 * 3)
    assert a[name].scores.abs().max() <= bound and a[name].scores.abs().max() > 0.9 * bound
    # drawn from the spec's shared generator (seeded with the selection seed), layer by layer in module order
    generator = torch.Generator().manual_seed(0)
    for layer_name, layer in weight_layers(model):
        bound = 1.0 / math.sqrt(layer.weight[0].numel())
        expected = (torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound
        assert torch.equal(a[f"{layer_name}.weight"].scores, expected)


# ---------------------------------------------------------------- composition and refusals

def test_bn_plus_supermask_trains_gamma_beta_and_the_scores():
    model = create_model("cifar_resnet_8_8", 4, seed=0)
    weights = sum(layer.weight.numel() for _, layer in weight_layers(model))
    selection = configure(model, "bn+supermask:50", seed=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert count_trainable(model) == weights + bn_param_count(model) == selection.num_trainable(model)
    assert sum(n.endswith(".scores") for n in names) == len(weight_layers(model))
    scores = {f"{n}.parametrizations.weight.0.scores" for n, _ in weight_layers(model)}
    assert set(names) == scores | set(affine_params(model, BATCHNORM_TYPES))  # the output bias stays frozen
    with_bias = create_model("cifar_resnet_8_8", 4, seed=0)
    configure(with_bias, "bias+supermask:50", seed=0)
    assert {n for n, p in with_bias.named_parameters() if p.requires_grad} == scores | {"fc.bias"}


def test_edge_popup_setting_signed_constant_without_bn_affine():
    cfg = from_dict(dict(TINY, data=SMALL, train="supermask:50", weight_init="signed_constant", bn_affine=False))
    model, selection = build_model(cfg, 4)
    frozen = _weights(model)
    for name, w in frozen.items():
        assert w.abs().unique().numel() == 1, name  # ±σ per layer
    for _, bn in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]:
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.weight.requires_grad
    assert count_trainable(model) == sum(w.numel() for w in frozen.values())


@pytest.mark.parametrize("spec, message", [
    ("supermask:0", "above 0% and at most 100%, got 0%"),
    ("supermask:101", "above 0% and at most 100%, got 101%"),
    ("supermask:abc", "'abc' is not a percentage"),
    ("supermask:-5", "'-5' is not a percentage"),
    ("supermask", "'supermask' takes an argument"),
    ("all+supermask:50", "a weight under a supermask is neither trained nor scored by another term"),
    ("supermask:50+output", "a weight under a supermask is neither trained nor scored by another term"),
    ("supermask:50+supermask:30", "both choose conv.weight"),
    ("random:matched+supermask:50", "a weight under a supermask"),
])
def test_bad_specs_are_refused_with_the_reason(spec, message):
    model = create_model("cifar_resnet_8_8", 4, seed=0)
    with pytest.raises(SpecError, match=message.replace("+", r"\+")) as e:
        configure(model, spec, seed=0)
    assert "supermask:P" in str(e.value) or "both choose" in str(e.value) or "neither" in str(e.value)


def test_bad_spec_is_refused_by_the_cli_before_training(tmp_path, capsys):
    code = main(["train", "--model", "cifar_resnet_8_8", "--data", SMALL, "--train", "supermask:101",
                 "--out", str(tmp_path), "--device", "cpu"])
    assert code != 0 and "supermask:101" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("model_name", ["cifar_resnet_8_8", "cifar_resnet_14_gn8", "cifar_resnet_8_8_nonorm",
                                        "cifar_vgg_11", "vit_p8_d1_w16_h2", "mlp_3_16_ln", "imagenet_resnet_18"])
def test_every_family_takes_a_supermask(model_name):
    model = create_model(model_name, 4, seed=0)
    frozen = _weights(model)
    configure(model, "supermask:50", seed=0)
    optimizer = torch.optim.SGD(trainable_parameters(model), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).logsumexp(1).sum().backward()
        optimizer.step()
    for name, m in supermasks(model).items():
        assert m.scores.grad is not None and int(m.mask().sum()) == m.keep, name
    assert all(torch.equal(_bits(frozen[n]), _bits(w)) for n, w in _weights(model).items())


def test_info_counts_the_scores(capsys):
    assert main(["info", "cifar_resnet_8_8", "--train", "supermask:50", "--json", "--num-classes", "4"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = create_model("cifar_resnet_8_8", 4, seed=0)
    weights = sum(layer.weight.numel() for _, layer in weight_layers(model))
    assert info["trainable_params"] == weights
    assert info["total_params"] == sum(p.numel() for p in model.parameters())  # the scores are not the model's
    rows = {r["name"]: r for r in info["layers"]}
    assert rows["blocks.0.conv1.weight"]["trainable"] == rows["blocks.0.conv1.weight"]["total"] == 576
    assert main(["info", "cifar_resnet_8_8", "--train", "bn+supermask:50", "--json", "--num-classes", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == weights + bn_param_count(model)


# ---------------------------------------------------------------- training runs

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("supermask")
    kw = dict(TINY, data=SMALL, out=str(out), eval_every=0.5)
    return {spec: Path(bnonly.train(from_dict(dict(kw, train=spec)), **QUIET)["run_dir"])
            for spec in ("supermask:50", "bn+supermask:50")}


def test_training_moves_scores_never_weights_and_lowers_the_loss(runs):
    run = RunDir(runs["bn+supermask:50"])
    cfg = from_dict(load_file(run.config))
    start, _ = build_model(cfg, 4)
    frozen = _weights(start)
    final = torch.load(run.final_weights, weights_only=True)
    scores = torch.load(run.scores, weights_only=True)
    initial = {n: m.scores for n, m in supermasks(start).items()}
    assert set(scores) == set(initial) and all(not torch.equal(scores[n], initial[n]) for n in scores)
    for name, w in frozen.items():
        # final.pt's weights are the frozen ones, bit for bit, wherever kept; zero elsewhere
        kept = final[f"{name}.weight"] != 0
        assert torch.equal(_bits(final[f"{name}.weight"][kept]), _bits(w[kept]))
        assert int(kept.sum()) == supermasks(start)[f"{name}.weight"].keep
    rows = run.read_metrics()
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    summary = run.read_summary()
    assert summary["trainable_params"] == sum(s.numel() for s in scores.values()) + bn_param_count(start)


def test_a_tiny_supermask_alone_learns(tmp_path):
    # 32 steps on 4 learnable classes: the train loss falls from ln 4 = 1.386 to about 1.05 (0.76x) here
    cfg = from_dict(dict(TINY, data=DATA, out=str(tmp_path), train="supermask:50", epochs=4, milestones=(3,),
                         schedule_epochs=4, eval_every=1))
    bnonly.train(cfg, **QUIET)
    rows = RunDir(tmp_path / cfg.run_name).read_metrics()
    assert rows[-1]["train_loss"] < 0.85 * rows[0]["train_loss"] and rows[-1]["test_acc"] > 0.3


def test_stopped_and_resumed_ends_bit_identical(tmp_path, runs):
    reference = RunDir(runs["bn+supermask:50"])
    cfg = from_dict(dict(load_file(reference.config), out=str(tmp_path)))
    with pytest.raises(Interrupted):
        bnonly.train(cfg, callbacks=[SignalAt({3}, signal.SIGTERM)], **QUIET)
    run = RunDir(tmp_path / cfg.run_name)
    assert run.load_checkpoint()[0]["step"] == 3
    assert bnonly.train(cfg, **QUIET)["status"] == "done"
    for a, b in ((run.final_weights, reference.final_weights), (run.scores, reference.scores)):
        fa, fb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        assert set(fa) == set(fb) and all(torch.equal(_bits(fa[k]), _bits(fb[k])) for k in fa)


def test_compact_file_stores_the_scores_and_rebuilds_the_predictions(runs, tmp_path):
    run = RunDir(runs["bn+supermask:50"])
    summary = run.read_summary()
    exported = export(run.path, tmp_path / "s.bnc")
    assert exported.trained == summary["trainable_params"]  # the scores and γ/β
    assert not exported.compact  # a score per weight: as many numbers as the network
    assert read_compact(tmp_path / "s.bnc")["trained"]["float32"].numel() == summary["trainable_params"]
    loaded = bnonly.load_compact(tmp_path / "s.bnc")
    out = import_run(tmp_path / "s.bnc", tmp_path / "imported")
    cfg = loaded.cfg
    test = make_batches(open_dataset(cfg.data).test, batch_size=32, train=False, augment="none",
                        normalize=cfg.normalize, seed=0, device=torch.device("cpu"), channels_last=False)
    plain = create_model(cfg.model, 4, seed=None)
    plain.load_state_dict(torch.load(run.final_weights, weights_only=True))
    plain.eval()
    x, _ = next(iter(test.batches(0)))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), plain(x))
    cpu = dict(bf16=False, device="cpu")
    assert evaluate(loaded.model, test, **cpu) == evaluate(plain, test, **cpu)
    assert evaluate(loaded.model, test, **cpu)["test_acc"] == pytest.approx(summary["test_acc"], abs=1 / 32)
    for name in ("final.pt", "init.pt", "scores.pt"):
        a, b = (torch.load(p / name, weights_only=True) for p in (run.path, out))
        assert set(a) == set(b) and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a), name
    assert plain_state_dict(loaded.model).keys() == torch.load(run.final_weights, weights_only=True).keys()


def test_export_without_scores_is_refused(runs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(runs["supermask:50"], copy)
    (copy / "scores.pt").unlink()
    with pytest.raises(bnonly.compact.CompactError, match="no scores.pt"):
        export(copy, tmp_path / "x.bnc")


def test_analysis_reports_the_kept_set(runs):
    result = analyze_run(runs["bn+supermask:50"], figures=False, draws=2)
    s = result["sections"]["supermask"]
    model = create_model("cifar_resnet_8_8", 4, seed=0)
    n = sum(layer.weight.numel() for _, layer in weight_layers(model))
    keep = sum(kept_count(layer.weight.numel(), 50) for _, layer in weight_layers(model))
    assert s["not_applicable"] is None and s["n_weights"] == n and s["n_kept"] == keep
    assert s["kept_fraction"] == keep / n
    assert [layer["kept_fraction"] for layer in s["layers"]] == [
        kept_count(layer.weight.numel(), 50) / layer.weight.numel() for _, layer in weight_layers(model)]
    assert 0.5 <= s["kept_from_initial"] < 1  # moved from the initial top-k, but overlaps it more than chance
    rel = s["disabled_relation"]
    # every BatchNorm of the ResNet (the shortcuts' too) normalizes a conv's output directly
    assert rel["n_layers_with_producer"] == len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert rel["n_disabled_features"] == result["sections"]["disabled"]["n_dead"]
    for key in ("feeding_disabled", "feeding_enabled", "reading_disabled", "reading_enabled"):
        assert rel[key] is None or 0 <= rel[key] <= 1
    assert rel["feeding_enabled"] is not None and rel["reading_enabled"] is not None


def test_analysis_of_a_run_without_supermask_is_not_applicable():
    model = create_model("cifar_resnet_8_8", 4, seed=0).eval()
    ctx = AnalysisContext(model, None, train="bn")
    assert supermask_section(ctx, {})["not_applicable"] == NOT_SUPERMASK


def test_ddp_on_two_processes_trains_the_scores_like_one_process(tmp_path):
    """torchrun with 2 gloo ranks and sync BN (the global batch) against one process: DDP all-reduces the
    scores' gradients like any parameter's, rank 0 alone writes scores.pt, and the frozen weights stay."""
    import subprocess
    import sys

    cfg = from_dict(dict(TINY, data="synthetic:train=512,test=128,classes=4,size=16", batch_size=64, epochs=1,
                         eval_every=0.125, milestones=(), schedule_epochs=1, sync_bn=True, bf16=False,
                         train="bn+supermask:50", out=str(tmp_path / "ddp")))
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "bnonly", "train", "--config", str(tmp_path / "c.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    one = RunDir(bnonly.train(cfg.replace(out=str(tmp_path / "one")), **QUIET)["run_dir"])
    ddp = RunDir(tmp_path / "ddp" / cfg.run_name)
    assert ddp.read_summary()["world_size"] == 2
    rows_a, rows_b = ddp.read_metrics(), one.read_metrics()
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == list(range(1, 9))
    assert abs(rows_a[0]["train_loss"] - rows_b[0]["train_loss"]) < 1e-5  # the same first step
    assert max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(rows_a, rows_b)) < 1e-3
    sa, sb = (torch.load(run.scores, weights_only=True) for run in (ddp, one))
    init = {n: m.scores.detach() for n, m in supermasks(build_model(cfg, 4)[0]).items()}
    moved = sum(float((sb[n] - init[n]).norm() ** 2) for n in sb) ** 0.5
    assert sum(float((sa[n] - sb[n]).norm() ** 2) for n in sb) ** 0.5 < 0.05 * moved
    final, start = torch.load(ddp.final_weights, weights_only=True), _weights(build_model(cfg, 4)[0])
    for name, w in start.items():
        kept = final[f"{name}.weight"] != 0
        assert torch.equal(final[f"{name}.weight"][kept], w[kept])
