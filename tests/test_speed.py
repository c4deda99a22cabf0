"""The fast-path preparation computes exactly what the plain model computes, and costs less."""

import conftest
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_DATA
from torch import nn

from bnonly import compute, speed
from bnonly.bench import Pipeline, profile_step, step_peak_bytes
from bnonly.config import TrainConfig
from bnonly.models import create_model
from bnonly.rundir import RunDir
from bnonly.trainable import configure, trainable_parameters
from bnonly.training import build, train

pytestmark = pytest.mark.compute  # every test here: numerics or memory of the fast path

TINY = dict(conftest.TINY, data=SMALL_DATA, epochs=1, schedule_epochs=1, augment="cifar")


def _model(name="cifar_resnet_8_8", spec="bn"):
    m = create_model(name, 4, seed=0)
    configure(m, spec, 0)
    return m


def _sgd_steps(model, batches, autocast=False):
    """A few SGD steps as the Trainer takes them; returns the losses."""
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.1, momentum=0.9, weight_decay=1e-4)
    losses = []
    for x, y in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def _batches(n=3, size=16, batch=8):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 4, (batch,), generator=g))
            for _ in range(n)]


# --- frozen weights pre-cast once ------------------------------------------------------------

def test_precast_changes_only_frozen_plain_layers():
    m = _model(spec="random-per-channel:2")  # every conv/linear weight parametrized: nothing frozen whole
    assert speed.precast_frozen(m, torch.bfloat16) == 0
    m = _model(spec="bn")
    convs_and_linears = sum(type(x) in (nn.Conv2d, nn.Linear) for x in m.modules())
    keys = list(m.state_dict())
    assert speed.precast_frozen(m, torch.bfloat16) == convs_and_linears
    assert list(m.state_dict()) == keys  # the copies are not saved
    assert all(x.weight.dtype == torch.float32 and x.weight_compute.dtype == torch.bfloat16
               for x in m.modules() if isinstance(x, speed._Precast))
    m = _model(spec="all")
    assert speed.precast_frozen(m, torch.bfloat16) == 0


def test_precast_computes_what_autocast_computes_and_keeps_fp32_weights():
    plain, fast = _model(), _model()
    speed.precast_frozen(fast, torch.bfloat16)
    frozen_before = {k: v.clone() for k, v in fast.state_dict().items() if "conv" in k or "fc" in k}
    batches = _batches()
    a = _sgd_steps(plain, batches, autocast=True)
    b = _sgd_steps(fast, batches, autocast=True)
    assert torch.equal(a, b)
    pa, pb = plain.state_dict(), fast.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert all(torch.equal(fast.state_dict()[k], v) and v.dtype == torch.float32 for k, v in frozen_before.items())


def test_precast_copies_follow_load_state_dict():
    fast, other = _model(), create_model("cifar_resnet_8_8", 4, seed=7)
    configure(other, "bn", 0)
    speed.precast_frozen(fast, torch.bfloat16)
    fast.load_state_dict(other.state_dict())
    x = _batches(1)[0][0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(x), other(x))


def test_precast_removes_the_per_step_weight_casts():
    """Under bf16 autocast a frozen weight (requires_grad=False) is cast again every step;
    with precast_frozen no tensor of a frozen weight's shape is cast at all."""
    counts = {}
    for precast in (False, True):
        m = _model()
        if precast:
            speed.precast_frozen(m, torch.bfloat16)
        opt = torch.optim.SGD(trainable_parameters(m), lr=0.1)
        (x, y), = _batches(1)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(m(x).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return len(y)

        step()
        counts[precast] = profile_step(Pipeline("p", step, m, opt), torch.device("cpu"))["frozen_weight_casts"]
    assert counts[False] >= sum(isinstance(x, nn.Conv2d) for x in m.modules()) and counts[True] == 0


# --- activation checkpointing ----------------------------------------------------------------

def test_checkpointing_gives_identical_steps_and_running_statistics():
    plain, ckpt = _model("cifar_resnet_14_8"), _model("cifar_resnet_14_8")
    assert speed.checkpoint_blocks(ckpt, 3) == 1
    assert isinstance(ckpt.blocks, speed.CheckpointedSequential) and [len(g) for g in ckpt.blocks.groups()] == [2, 2, 2]
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    batches = _batches()
    assert torch.equal(_sgd_steps(plain, batches), _sgd_steps(ckpt, batches))
    pa, pb = plain.state_dict(), ckpt.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)  # includes running stats and num_batches_tracked
    assert int(pb["blocks.0.bn1.num_batches_tracked"]) == len(batches)
    plain.eval(), ckpt.eval()
    x = batches[0][0]
    with torch.no_grad():
        assert torch.equal(plain(x), ckpt(x))


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_checkpointing_lowers_step_memory(bf16):
    # 24 blocks in 5 segments: about half the activations are never kept. Measured ratios (AMD EPYC,
    # AVX-512 bf16): 0.51 in float32, 0.52 under bf16 autocast with pre-cast weights.
    peaks = {}
    for segments in (0, 5):
        m = _model("cifar_resnet_50_8")
        if bf16:
            speed.precast_frozen(m, torch.bfloat16)
        if segments:
            speed.checkpoint_blocks(m, segments)
        opt = torch.optim.SGD(trainable_parameters(m), lr=0.1)
        (x, y), = _batches(1, size=32, batch=16)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(m(x).float(), y)
            loss.backward()
            opt.step()
            return len(y)

        step()
        peaks[segments] = step_peak_bytes(Pipeline("p", step, m, opt), torch.device("cpu"))
    assert peaks[5] < 0.65 * peaks[0], peaks


def test_checkpointing_rejects_what_it_cannot_do():
    with pytest.raises(speed.SpeedOptionError, match="at least 1"):
        speed.checkpoint_blocks(_model(), 0)
    with pytest.raises(speed.SpeedOptionError, match="no top-level nn.Sequential"):
        speed.checkpoint_blocks(nn.Linear(2, 2), 2)


# --- through build() and train() -------------------------------------------------------------

def test_build_applies_the_speed_options(tmp_path):
    built = build(TrainConfig(**TINY, out=str(tmp_path), bf16=True, checkpoint_activations=2))
    assert isinstance(built.model.blocks, speed.CheckpointedSequential)
    assert all(isinstance(m, speed._Precast) for m in built.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    plain = build(TrainConfig(**TINY, out=str(tmp_path), bf16=False))
    assert type(plain.model.blocks) is nn.Sequential and not plain.bf16
    assert not any(isinstance(m, speed._Precast) for m in plain.model.modules())
    # Left unset, bf16 is this machine's default (or the forced path's), and precasting follows it.
    auto = build(TrainConfig(**TINY, out=str(tmp_path)))
    assert auto.bf16 == compute.auto_defaults(compute.Capabilities.of("cpu")).bf16
    assert any(isinstance(m, speed._Precast) for m in auto.model.modules()) == auto.bf16


def test_checkpointed_run_ends_identical_to_plain_run(tmp_path):
    finals = []
    for segments in (0, 2):
        cfg = TrainConfig(**TINY, out=str(tmp_path / str(segments)), checkpoint_activations=segments)
        summary = train(cfg, log=lambda *_: None)
        finals.append(torch.load(RunDir(summary["run_dir"]).final_weights))
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
    assert TrainConfig(checkpoint_activations=2).run_id == TrainConfig().run_id  # speed only, same experiment


def test_prepare_compiles_in_place_keeping_state_dict_keys():
    m = _model()
    keys = list(m.state_dict())
    speed.prepare(m, device=torch.device("cpu"), bf16=False, compile=True)
    assert m._compiled_call_impl is not None and list(m.state_dict()) == keys
    assert speed.compile_options(torch.device("cuda")) == dict(mode="reduce-overhead")
