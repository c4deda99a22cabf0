"""The families beyond BatchNorm ResNets: CIFAR ResNets with any normalizer, a small ViT, an MLP.

Parameter counts come from each architecture's formula, written out here (not read from the
code); every family is trained end to end under every what-trains term, with frozen entries
checked bitwise and trainable counts checked against the term's definition; a term that cannot
apply to a family is a SpecError that says why.
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import bnonly
from bnonly import layers, speed
from bnonly.cli import main
from bnonly.models import create_model, family_of, initialize
from bnonly.rundir import RunDir
from bnonly.trainable import SpecError, configure, count_trainable, select

# ---------------------------------------------------------------- the formulas

def resnet(depth: int, width: int = 16, norm: str = "bn", classes: int = 10) -> dict[str, int]:
    """CIFAR ResNet-(6n+2): a 3x3 stem conv; per stage s (width w_s = W 2^s) n blocks of two 3x3
    convs, the first block of stages 1 and 2 with a 1x1 shortcut conv; one normalizer per conv."""
    n = (depth - 2) // 6
    # stem 27W; stage 0: 2n 3x3 convs WxW; stage 1: 9*2W^2 + 9*4W^2 + 2W^2 first, 72W^2 per further block;
    # stage 2: 9*8W^2 + 9*16W^2 + 8W^2 first, 288W^2 per further block.
    conv_weights = 27 * width + (18 * n + 56 + 72 * (n - 1) + 224 + 288 * (n - 1)) * width ** 2
    channels = width * (1 + 2 * n) + 2 * width * (2 * n + 1) + 4 * width * (2 * n + 1)  # output channels of all convs
    fc = 4 * width * classes + classes
    affine = 0 if norm == "nonorm" else 2 * channels
    conv_biases, scales = (channels, 3 * n) if norm == "nonorm" else (0, 0)
    return dict(total=conv_weights + affine + conv_biases + scales + fc, norm=affine, bn=affine if norm == "bn" else 0,
                output=fc, bias=conv_biases + classes, rows=channels + classes)


def vit(patch: int, depth: int, width: int, heads: int, norm: str = "ln", cls: bool = True,
        classes: int = 10) -> dict[str, int]:
    """Patch conv 3P^2 W (+W bias); per block qkv 3W^2, proj W^2, fc1 4W^2, fc2 4W^2 (biases 3W+W+4W+W) and two
    norms; a final norm; position embedding per token (the class token included); the head."""
    tokens = (32 // patch) ** 2 + cls
    weights = 3 * patch ** 2 * width + depth * 12 * width ** 2 + width * classes
    biases = width + depth * 9 * width + classes
    affine = (2 * depth + 1) * 2 * width
    bare = tokens * width + cls * width
    return dict(total=weights + biases + affine + bare, norm=affine, bn=affine if norm == "bn" else 0,
                output=width * classes + classes, bias=biases, rows=width + depth * 9 * width + classes)


def mlp(depth: int, width: int, norm: str, classes: int = 10) -> dict[str, int]:
    """3072 -> W, then (D - 2) W -> W, each without bias and followed by a norm; the head W -> classes."""
    weights = 3 * 32 * 32 * width + (depth - 2) * width ** 2 + width * classes
    affine = (depth - 1) * 2 * width
    return dict(total=weights + affine + classes, norm=affine, bn=affine if norm == "bn" else 0,
                output=width * classes + classes, bias=classes, rows=(depth - 1) * width + classes)


FORMULAS = {
    "cifar_resnet_14": resnet(14), "cifar_resnet_14_gn8": resnet(14, norm="gn"),
    "cifar_resnet_14_ln": resnet(14, norm="ln"), "cifar_resnet_14_in": resnet(14, norm="in"),
    "cifar_resnet_14_nonorm": resnet(14, norm="nonorm"),
    "cifar_resnet_14_32_ln": resnet(14, 32, "ln"), "cifar_resnet_56_gn16": resnet(56, norm="gn"),
    "cifar_resnet_110_nonorm": resnet(110, norm="nonorm"), "cifar_resnet_8_8_gn4": resnet(8, 8, "gn"),
    "vit_p4_d6_w192_h3": vit(4, 6, 192, 3), "vit_p4_d6_w192_h3_bn": vit(4, 6, 192, 3, "bn"),
    "vit_p4_d6_w192_h3_gap": vit(4, 6, 192, 3, cls=False), "vit_p4_d12_w192_h3": vit(4, 12, 192, 3),
    "vit_p2_d6_w192_h3": vit(2, 6, 192, 3), "vit_p8_d1_w16_h2_bn_gap": vit(8, 1, 16, 2, "bn", cls=False),
    "mlp_4_512_bn": mlp(4, 512, "bn"), "mlp_4_512_ln": mlp(4, 512, "ln"), "mlp_2_1024_bn": mlp(2, 1024, "bn"),
}


def test_the_formulas_reproduce_the_pinned_batchnorm_counts():
    """The ResNet formula gives PAPER.md's counts (tests/test_models.py) before it counts anything new."""
    assert resnet(14)["total"] == 175_258 and resnet(14)["bn"] == 1_120
    assert resnet(110)["total"] == 1_730_714 and resnet(866)["bn"] == 64_736
    assert resnet(14, 512)["total"] == 177_279_498


def _norm_params(model: nn.Module) -> int:
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
    return sum(p.numel() for m in model.modules() if isinstance(m, kinds) for p in m.parameters(recurse=False))


@pytest.mark.parametrize("name", FORMULAS)
def test_parameter_counts_match_the_formula(name):
    model, want = create_model(name, device="meta"), FORMULAS[name]
    bn = sum(p.numel() for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))
             for p in m.parameters(recurse=False))
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert sum(p.numel() for p in model.parameters()) == want["total"]
    assert (_norm_params(model), bn, sum(p.numel() for p in head.parameters())) == (want["norm"], want["bn"],
                                                                                    want["output"])
    assert layers.norm_param_count(model) == want["norm"] and layers.bn_param_count(model) == want["bn"]


def test_default_names_are_the_batchnorm_resnets():
    model = create_model("cifar_resnet_14", device="meta")
    assert {type(m) for m in model.modules() if isinstance(m, layers.NORM_TYPES)} == {nn.BatchNorm2d}
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not [n for n, _ in model.named_parameters() if n.endswith("scale")]


@pytest.mark.parametrize("name,kind", [("cifar_resnet_8_8_gn4", nn.GroupNorm), ("cifar_resnet_8_8_ln", nn.GroupNorm),
                                       ("cifar_resnet_8_8_in", nn.InstanceNorm2d), ("vit_p8_d1_w16_h2", nn.LayerNorm),
                                       ("vit_p8_d1_w16_h2_bn_gap", nn.BatchNorm1d), ("mlp_3_16_ln", nn.LayerNorm),
                                       ("mlp_3_16_bn", nn.BatchNorm1d)])
def test_every_normalizer_is_the_one_the_name_asks_for(name, kind):
    norms = [m for m in create_model(name, device="meta").modules() if isinstance(m, layers.NORM_TYPES)]
    assert norms and all(isinstance(m, kind) for m in norms) and not any(isinstance(m, nn.BatchNorm2d) for m in norms)
    groups = {m.num_groups for m in norms if isinstance(m, nn.GroupNorm)}
    assert groups == ({4} if name.endswith("gn4") else {1} if name.endswith("_ln") and "resnet" in name else set())


@pytest.mark.parametrize("name,reason", [
    ("cifar_resnet_14_gn3", "3 groups do not divide width 16"), ("cifar_resnet_14_bn", "matches no known pattern"),
    ("cifar_resnet_14_gn0", "matches no known pattern"), ("vit_p5_d1_w16_h2", "patch size must divide"),
    ("vit_p4_d1_w16_h3", "multiple of the heads"), ("vit_p4_d1_w16_h2_gap_bn", "matches no known pattern"),
    ("mlp_1_16_bn", "at least 2"), ("mlp_3_16", "matches no known pattern")])
def test_bad_new_names_say_why(name, reason):
    with pytest.raises(ValueError, match=re.escape(reason)):
        create_model(name, device="meta")


# ---------------------------------------------------------------- every family under every term

MODELS = {
    "cifar_resnet_8_8": resnet(8, 8, "bn", 4), "cifar_resnet_8_8_gn4": resnet(8, 8, "gn", 4),
    "cifar_resnet_8_8_ln": resnet(8, 8, "ln", 4), "cifar_resnet_8_8_in": resnet(8, 8, "in", 4),
    "cifar_resnet_8_8_nonorm": resnet(8, 8, "nonorm", 4), "vit_p8_d1_w16_h2": vit(8, 1, 16, 2, classes=4),
    "vit_p8_d1_w16_h2_bn_gap": vit(8, 1, 16, 2, "bn", cls=False, classes=4),
    "mlp_3_16_bn": mlp(3, 16, "bn", 4), "mlp_3_16_ln": mlp(3, 16, "ln", 4),
}
TERMS = ["all", "none", "bn", "gamma", "beta", "norm", "output", "bias", "random-per-channel:2", "random:matched",
         "random:50", "norm+bias"]
TINY = dict(data="synthetic:train=64,test=32,classes=4,size=32", batch_size=16, epochs=0.5, milestones=[1],
            schedule_epochs=1, eval_every=0, device="cpu", threads=1, progress=False)


def expected(term: str, c: dict[str, int]) -> int | str:
    """The term's definition on a model of counts ``c``: its trainable count, or the SpecError it must raise."""
    no_bn = "selects nothing: the model has no affine BatchNorm"
    no_norm = "selects nothing: the model has no affine normalization"
    return {
        "all": c["total"], "none": 0, "output": c["output"], "bias": c["bias"], "random-per-channel:2": 2 * c["rows"],
        "random:50": 50, "bn": c["bn"] or no_bn, "gamma": c["bn"] // 2 or no_bn, "beta": c["bn"] // 2 or no_bn,
        "norm": c["norm"] or no_norm, "norm+bias": c["norm"] and c["norm"] + c["bias"] or no_norm,
        "random:matched": c["bn"] or c["norm"] or "selects nothing (the model has no normalization layer with γ/β",
    }[term]


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("name", MODELS)
def test_every_family_trains_under_every_term(tmp_path, name, term):
    want = expected(term, MODELS[name])
    cfg = bnonly.TrainConfig(**TINY, model=name, train=term, out=str(tmp_path))
    if isinstance(want, str):
        with pytest.raises(SpecError, match=re.escape(want)):
            bnonly.train(cfg, log=lambda *_: None)
        return
    summary = bnonly.train(cfg, log=lambda *_: None)
    assert summary["status"] == "done" and summary["trainable_params"] == want
    assert summary["total_params"] == MODELS[name]["total"]
    run = RunDir(Path(summary["run_dir"]))
    init, final = torch.load(run.init_weights), torch.load(run.final_weights)
    model = create_model(name, 4, device="meta")
    masks = select(model, term, seed=0).masks
    moved = 0
    for pname, p in model.named_parameters():
        mask = masks.get(pname, False)
        mask = torch.full(p.shape, mask) if isinstance(mask, bool) else mask
        assert torch.equal(init[pname][~mask], final[pname][~mask]), f"frozen entries of {pname} moved"
        moved += int((init[pname][mask] != final[pname][mask]).sum())
    assert (moved > 0) == (term != "none")


# ---------------------------------------------------------------- initialization of the new families

def test_vit_init_is_timms_with_the_studys_gamma():
    model = create_model("vit_p4_d6_w192_h3", seed=0)
    linears = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    assert linears.std().item() == pytest.approx(0.02, rel=0.01) and linears.abs().max() < 2
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in model.modules() if isinstance(m, nn.Linear))
    patch = model.patch_embed  # timm leaves it at PyTorch's default, U(±1/sqrt(48))
    assert patch.weight.abs().max() <= 1 / math.sqrt(48) and patch.weight.std().item() == pytest.approx(
        1 / math.sqrt(3 * 48), rel=0.05)
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.03)
    assert 0 < model.cls_token.abs().max() < 1e-5
    gammas = torch.cat([m.weight for m in model.modules() if isinstance(m, nn.LayerNorm)])
    assert gammas.min() >= 0 and gammas.max() <= 1 and gammas.std() > 0.2  # gamma_init="uniform", the default
    ones = create_model("vit_p4_d6_w192_h3", seed=0, gamma_init="ones")
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in ones.modules() if isinstance(m, nn.LayerNorm))


def test_a_vit_takes_another_weight_distribution_and_keeps_its_own_embeddings():
    timm = create_model("vit_p4_d6_w192_h3", seed=0)
    kaiming = create_model("vit_p4_d6_w192_h3", seed=0, weight_init="kaiming_normal")
    assert kaiming.blocks[0].attn.qkv.weight.std().item() == pytest.approx(math.sqrt(2 / 192), rel=0.01)
    assert torch.equal(timm.pos_embed, kaiming.pos_embed) and torch.equal(timm.cls_token, kaiming.cls_token)
    assert family_of("vit_p4_d6_w192_h3").weight_init == "timm_vit"
    explicit = create_model("vit_p4_d6_w192_h3", seed=0, weight_init="timm_vit")
    assert all(torch.equal(a, b) for a, b in zip(timm.state_dict().values(), explicit.state_dict().values()))


def test_no_norm_resnet_scales_its_branches_and_stays_finite_with_depth():
    model = create_model("cifar_resnet_110_nonorm", seed=0)
    blocks = list(model.blocks)
    assert len(blocks) == 54 and all(torch.equal(b.scale, torch.tensor(1 / math.sqrt(54))) for b in blocks)
    assert all(m.bias is not None and (m.bias != 0).any() for m in model.modules() if isinstance(m, nn.Conv2d))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scaled = model(x).std().item()
        for b in blocks:
            b.scale.fill_(1.0)
        unscaled = model(x).std().item()
    assert 0.1 < scaled < 10 and unscaled > 1e6  # why the scale: Kaiming branches double the variance per block


@pytest.mark.parametrize("name", ["cifar_resnet_8_8_nonorm", "cifar_resnet_8_8_gn4", "cifar_resnet_8_8_in",
                                  "vit_p8_d1_w16_h2", "vit_p8_d2_w16_h2_bn_gap", "mlp_3_16_bn", "mlp_3_16_ln"])
def test_init_covers_every_parameter_and_the_layer_kinds_agree(name):
    """Every parameter starts at 7, and initialize sets them all (bare ones through the module's own hook); 'norm'
    trains exactly the normalization layers' parameters and the random baselines draw from the conv/linear weights."""
    model = create_model(name, 4, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    initialize(model, seed=0, weight_init=family_of(name).weight_init)
    assert all((p != 7).all() for p in model.parameters())
    kinds = (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d, nn.InstanceNorm2d)
    by_kind = {f"{mn}.{pn}" for mn, m in model.named_modules() if isinstance(m, kinds) for pn in ("weight", "bias")}
    if by_kind:
        assert set(select(model, "norm").masks) == by_kind
    else:
        with pytest.raises(SpecError, match="no affine normalization layers"):
            select(model, "norm")
    weights = {f"{mn}.weight" for mn, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(select(model, "random-per-channel:1").masks) == weights
    bare = {n for n, _ in model.named_parameters()} - weights - by_kind - set(select(model, "bias").masks)
    assert bare == ({"pos_embed", "cls_token"} if name == "vit_p8_d1_w16_h2" else {"pos_embed"} if "vit" in name
                    else {f"blocks.{i}.scale" for i in range(3)} if "nonorm" in name else set())
    assert set(select(model, "all").masks) >= bare


# ---------------------------------------------------------------- the rest of the framework

@pytest.mark.parametrize("name", ["vit_p8_d2_w16_h2_gap", "vit_p8_d2_w16_h2_bn", "mlp_3_16_bn"])
def test_activation_checkpointing_wraps_the_blocks_and_changes_nothing(name):
    def step(model):
        model(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))).square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = create_model(name, seed=0), create_model(name, seed=0)
    configure(plain, "norm")
    configure(checkpointed, "norm")
    assert speed.checkpoint_blocks(checkpointed, 2) == 1
    a, b = step(plain), step(checkpointed)
    assert a.keys() == b.keys() == set(layers.norm_affine_params(create_model(name, device="meta")))
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    assert all(torch.equal(x, y) for x, y in zip(plain.state_dict().values(), checkpointed.state_dict().values()))


@pytest.mark.parametrize("name", ["cifar_resnet_8_8_gn4", "cifar_resnet_8_8_in", "vit_p8_d1_w16_h2", "mlp_3_16_ln"])
def test_channels_last_and_compile_match_eager(name):
    model = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
        torch._dynamo.reset()
        torch.testing.assert_close(torch.compile(model, backend="eager", fullgraph=True)(x), ref)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-4)


GROUPNORM_CRASH = """
import torch
gn = torch.nn.GroupNorm({groups}, 8)
x = torch.randn(4, 8, 8, 8).to(memory_format=torch.channels_last)
gn(x).sum().backward()
"""


@pytest.mark.parametrize("groups", [1, 4])
def test_torchs_groupnorm_crash_that_groupnorm2d_avoids(groups):
    """PyTorch 2.13's CPU GroupNorm backward segfaults on channels_last input that needs no gradient (only γ/β
    do). When this starts passing in a new torch, GroupNorm2d's workaround can go."""
    crashed = subprocess.run([sys.executable, "-c", GROUPNORM_CRASH.format(groups=groups)], capture_output=True)
    assert crashed.returncode != 0, "torch's GroupNorm no longer crashes: drop the workaround in GroupNorm2d"
    safe = create_model(f"cifar_resnet_8_8_{'ln' if groups == 1 else 'gn4'}").bn
    x = torch.randn(4, 8, 8, 8).to(memory_format=torch.channels_last)
    out = safe(x)
    out.sum().backward()
    assert out.is_contiguous(memory_format=torch.channels_last) and safe.weight.grad.abs().sum() > 0
    torch.testing.assert_close(out, nn.GroupNorm.forward(safe, x.contiguous()))


def test_a_vit_refuses_other_image_sizes():
    with pytest.raises(RuntimeError, match="takes 32x32 images .4x4 patches of 8x8.*got 16x16"):
        create_model("vit_p8_d1_w16_h2")(torch.zeros(1, 3, 16, 16))


def test_info_counts_a_vit(capsys):
    assert main(["info", "vit_p8_d1_w16_h2", "--train", "norm+bias", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    want = vit(8, 1, 16, 2)
    assert (info["trainable_params"], info["total_params"]) == (want["norm"] + want["bias"], want["total"])
    rows = {r["name"]: r for r in info["layers"]}
    assert rows["pos_embed"]["trainable"] == 0 and rows["blocks.0.attn.qkv.bias"]["trainable"] == 48


def test_a_sweep_over_the_new_families(tmp_path, capsys):
    base = dict(TINY, epochs=1, out=str(tmp_path / "runs"))
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(dict(base=base, grid=[{"model": ["vit_p8_d1_w16_h2_bn", "mlp_3_16_ln"],
                                                           "train": ["norm"]}])))
    assert main(["sweep", str(spec), "--jobs", "2"]) == 0
    assert capsys.readouterr().out.endswith("\n2 done\n")
    summaries = {s["model"]: s for s in (RunDir(d).read_summary() for d in (tmp_path / "runs").iterdir())}
    assert {m: (s["status"], s["trainable_params"]) for m, s in summaries.items()} == {
        "vit_p8_d1_w16_h2_bn": ("done", vit(8, 1, 16, 2, "bn")["norm"]),
        "mlp_3_16_ln": ("done", mlp(3, 16, "ln")["norm"])}


def test_ddp_on_a_layernorm_vit_matches_one_process(tmp_path):
    """LayerNorm has no batch statistics, so 2 ranks on halves of the global batch train what one process trains
    (bare parameters included: 'all')."""
    cfg = bnonly.TrainConfig(**dict(TINY, epochs=1, eval_every=0.25), model="vit_p8_d1_w16_h2", train="all",
                             bf16=False, out=str(tmp_path / "ddp"))
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "bnonly", "train", "--config", str(tmp_path / "c.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    ddp = RunDir(tmp_path / "ddp" / cfg.run_name)
    one = RunDir(bnonly.train(cfg.replace(out=str(tmp_path / "one")), log=lambda *_: None)["run_dir"])
    losses = [[m["train_loss"] for m in run.read_metrics()] for run in (ddp, one)]
    assert len(losses[0]) == 4 and max(abs(a - b) for a, b in zip(*losses)) < 1e-5
    a, b = torch.load(ddp.final_weights), torch.load(one.final_weights)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in b) and count_trainable(create_model(cfg.model)) > 0
