"""The fused norm-act kernel (bnonly.fused_norm): it computes what the plain BatchNorm2d + add +
ReLU compute, in both CPU dtypes and both memory formats, trains the same runs, and is a compute
setting like the others (default, record, resume, refusals).

Exactness is judged against a float64 computation of the same inputs: the fused kernel must be at
least as close to it as the plain modules are (relative L2 error), because the two legitimately
differ in rounding (and so in the ReLU mask of values within a rounding error of zero)."""

import json
import statistics

import conftest
import pytest
import torch
from conftest import QUIET, TINY, SignalAt
from torch import nn

from bnonly import compute, fused_norm, speed
from bnonly.compute import Capabilities, resolve
from bnonly.config import ConfigError, TrainConfig
from bnonly.distributed import GlobalBatchNorm2d
from bnonly.models import create_model
from bnonly.rundir import RunDir
from bnonly.training import Callback, Interrupted, train

pytestmark = pytest.mark.skipif(fused_norm.unavailable_reason() is not None,
                                reason=f"fused kernel unavailable: {fused_norm.unavailable_reason()}")

FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
#: Relative L2 error to float64 each dtype allows the fused kernel, whatever the plain modules reach.
TOLERANCE = {torch.float32: 1e-6, torch.bfloat16: 4e-3}


def _inputs(dtype, fmt, residual, affine=True, shape=(16, 8, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2 + 0.5
    r = torch.randn(shape, generator=g) if residual else None
    dy = torch.randn(shape, generator=g)
    gamma = torch.empty(shape[1]).uniform_(0.5, 1.5, generator=g)
    beta = torch.empty(shape[1]).uniform_(-0.5, 0.5, generator=g)
    cast = (lambda t: None if t is None else t.to(dtype).contiguous(memory_format=fmt))
    return cast(x), cast(r), cast(dy), (gamma, beta) if affine else None


def _run(kind, x, r, dy, affine, momentum=0.1, relu=True):
    """(y, dx, dγ, dβ, running mean, running var, dresidual) of relu(bn(x) + r) (``relu`` False:
    bn(x) + r), by ``kind``: plain modules, the fused kernel, or the plain modules in float64."""
    dtype = torch.float64 if kind == "reference" else torch.float32
    bn = nn.BatchNorm2d(x.shape[1], affine=affine is not None, momentum=momentum).to(dtype)
    if affine is not None:
        with torch.no_grad():
            bn.weight.copy_(affine[0])
            bn.bias.copy_(affine[1])
    if kind == "fused":
        assert fused_norm.enable(bn) == 1
    if kind == "reference":
        x, dy, r = x.double(), dy.double(), None if r is None else r.double()
    x = x.detach().clone().requires_grad_()
    r = None if r is None else r.detach().clone().requires_grad_()
    y = fused_norm.norm_act(bn, nn.ReLU() if relu else None, x, r)
    y.backward(dy)
    grads = (bn.weight.grad, bn.bias.grad) if affine is not None else (None, None)
    return y, x.grad, *grads, bn.running_mean, bn.running_var, None if r is None else r.grad


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS)
@pytest.mark.parametrize("residual", [False, True], ids=["no-residual", "residual"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no-affine"])
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-act"])  # no-act: the projection shortcuts' norm
def test_the_kernel_is_as_exact_as_the_plain_modules(dtype, fmt, residual, affine, relu):
    x, r, dy, gb = _inputs(dtype, fmt, residual, affine)
    ref, plain, fused = (_run(k, x, r, dy, gb, relu=relu) for k in ("reference", "plain", "fused"))
    names = ["y", "dx", "dgamma", "dbeta", "running_mean", "running_var", "dresidual"]
    for name, p, f, q in zip(names, plain, fused, ref):
        if q is None:
            assert f is None and p is None, name
            continue
        assert f.dtype == p.dtype and f.shape == p.shape, name
        err, plain_err = _rel(f, q), _rel(p, q)
        assert err <= max(TOLERANCE[dtype], 1.5 * plain_err), (name, err, plain_err)
    # The output keeps the input's memory format and dtype, as BatchNorm's does.
    assert fused[0].is_contiguous(memory_format=fmt) and fused[0].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("channels", [3, 24, 40, 300])
def test_channel_counts_off_the_fold_width_are_exact(dtype, channels):
    """The per-chunk fold sums 16 channels at a time (csrc/norm_act.cpp, FOLD_LANES): fewer, a
    partial last group, several groups, and a tile of one row (C > 256) must all sum right."""
    x, r, dy, gb = _inputs(dtype, torch.channels_last, True, shape=(4, channels, 5, 7), seed=channels)
    ref, plain, fused = (_run(k, x, r, dy, gb) for k in ("reference", "plain", "fused"))
    for name, p, f, q in zip(["y", "dx", "dgamma", "dbeta", "running_mean", "running_var"], plain, fused, ref):
        err, plain_err = _rel(f, q), _rel(p, q)
        assert err <= max(TOLERANCE[dtype], 1.5 * plain_err), (name, err, plain_err)


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES)
@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS)
def test_a_nan_stays_a_nan_as_in_the_plain_modules(dtype, fmt):
    """A NaN in x makes its channel's statistics, so the whole channel, NaN; torch.relu keeps it,
    and so must the kernel (a ReLU that zeroed it would hide a diverging run from the loss check)."""
    x, r, dy, gb = _inputs(dtype, fmt, True)
    x[3, 2, 1, 4] = float("nan")
    r[5, 6, 2, 2] = float("nan")
    plain, fused = (_run(k, x, r, dy, gb) for k in ("plain", "fused"))
    for name, p, f in zip(["y", "dx", "dgamma", "dbeta", "running_mean", "running_var", "dresidual"], plain, fused):
        assert torch.equal(f.isnan(), p.isnan()), name
    y = fused[0]
    assert y[:, 2].isnan().all() and y[5, 6, 2, 2].isnan() and y.isnan().sum() == y[:, 2].numel() + 1


def test_the_relu_mask_is_exactly_the_forwards():
    """Without a residual the backward recomputes the mask from x: no gradient may pass where the
    forward output was zero, and every one where it was positive."""
    x, _, dy, gb = _inputs(torch.float32, torch.channels_last, False, shape=(64, 16, 8, 8))
    y, dx, *_ = _run("fused", x, None, dy, gb)
    bn = nn.BatchNorm2d(16)
    fused_norm.enable(bn)
    xx = x.clone().requires_grad_()
    out = fused_norm.norm_act(bn, nn.ReLU(), xx)
    # d(sum(out * dy))/d(out) is dy; through the ReLU it is dy where out > 0: the gradient of the
    # normalized values, checked through γ's gradient with β's (their sums include only those).
    out.backward(dy)
    on = out.detach() > 0
    assert torch.allclose(bn.bias.grad, (dy * on).sum(dim=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_the_kernel_does_not_depend_on_the_thread_count():
    x, r, dy, gb = _inputs(torch.float32, torch.channels_last, True, shape=(64, 16, 16, 16))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("fused", x, r, dy, gb)
        torch.set_num_threads(2)
        two = _run("fused", x, r, dy, gb)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one, two) if a is not None)


def test_uncovered_cases_run_the_plain_modules():
    x = torch.randn(8, 4, 5, 5)
    bn = nn.BatchNorm2d(4)
    fused_norm.enable(bn)
    bn.eval()  # running statistics: the plain module, bit for bit
    assert torch.equal(fused_norm.norm_act(bn, nn.ReLU(), x), torch.relu(nn.BatchNorm2d(4).eval()(x)))
    bn.train()
    assert not fused_norm._fusable(bn, nn.GELU(), x, None)  # another activation
    assert not fused_norm._fusable(bn, nn.ReLU(), x.double(), None)  # another dtype
    assert not fused_norm._fusable(bn, nn.ReLU(), x[:, :, ::2], None)  # a strided view
    assert not fused_norm._fusable(bn, nn.ReLU(), x[:1, :, :1, :1], None)  # one value per channel: torch refuses it
    assert not fused_norm._fusable(nn.BatchNorm2d(4), nn.ReLU(), x, None)  # not enabled
    assert fused_norm._fusable(bn, None, x, None)  # no activation: covered
    hooked_relu = nn.ReLU()
    hooked_relu.register_forward_pre_hook(lambda *a: None)
    assert not fused_norm._fusable(bn, hooked_relu, x, None)  # a hook on the activation
    seen = []
    bn.register_forward_hook(lambda *a: seen.append(1))
    fused_norm.norm_act(bn, nn.ReLU(), x)
    assert seen == [1]  # a hook sees the module run
    bn.__class__ = GlobalBatchNorm2d  # what sync_bn does to a marked layer: its statistics span the ranks
    assert not fused_norm._fusable(bn, nn.ReLU(), x, None)
    gn = nn.GroupNorm(2, 4)
    assert fused_norm.enable(gn) == 0  # only BatchNorm2d is covered


def _bn_only(model):
    for m in model.modules():
        for p in m.parameters(recurse=False):
            p.requires_grad_(isinstance(m, nn.BatchNorm2d))
    return model


def _one_step(kind, bf16, x, y):
    """The gradients and BatchNorm buffers after one BN-only step of cifar_resnet_8_8: ``kind`` is
    plain, fused, or reference (float64, no autocast)."""
    model = _bn_only(create_model("cifar_resnet_8_8", 10, seed=0)).to(memory_format=torch.channels_last)
    if kind == "reference":
        model, x = model.double(), x.double()
    if kind == "fused":
        assert fused_norm.enable(model) == 9  # stem, 3 blocks x 2, 2 shortcuts
    if bf16 and kind != "reference":
        speed.precast_frozen(model, torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and kind != "reference"):
        loss = nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    stats = {n: b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))}
    return grads, stats, {n: b for n, b in model.named_buffers() if n.endswith("num_batches_tracked")}


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_one_step_gives_the_same_gamma_beta_gradients_and_statistics(bf16):
    """Every γ/β gradient and running statistic of one step against float64. float32: each tensor
    within 1e-5 relative L2 error. bf16: the rounding of bf16 activations through the network puts
    ~12% relative error on the γ/β gradients of this small net either way, so the stated tolerance
    is the mean over the tensors: no more than 1.3x the plain modules' mean error (measured 0.8-1.2x
    over three seeds); statistics within 1.5x the plain error or 1e-3."""
    x = torch.randn(32, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))
    ref, plain, fused = (_one_step(kind, bf16, x, y) for kind in ("reference", "plain", "fused"))
    for part in (0, 1):
        assert ref[part].keys() == fused[part].keys() and ref[part]
        errors = [(_rel(fused[part][n], q), _rel(plain[part][n], q)) for n, q in ref[part].items()]
        if not bf16:
            assert max(e for e, _ in errors) < 1e-5, errors
        elif part == 0:
            mean = [sum(column) / len(errors) for column in zip(*errors)]
            assert mean[0] < 1.3 * mean[1], mean
        else:
            assert all(e < max(1e-3, 1.5 * p) for e, p in errors), errors
    assert all(torch.equal(fused[2][n], ref[2][n]) for n in ref[2])  # one batch tracked per layer


@pytest.mark.compute
@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_200_steps_of_training_follow_the_same_loss_curve(tmp_path, bf16):
    """The same run with the kernel and without, 200 SGD steps, three seeds. Rounding differences
    grow over training (SGD on a small net amplifies them), so the tolerance is the dtype's own: the
    fused runs may differ from the plain ones by no more than two equally valid plain runs differ
    from each other (NCHW against channels_last, whose kernels round differently), with a floor;
    the first steps agree to the dtype's precision; so do the final BatchNorm running statistics.

    Why three seeds, pooled: after 200 chaotic steps the gap of one pair of runs is one draw of a
    heavy-tailed variable. On an AMX Xeon, seed 0 alone gave a bf16 fused gap 4.1x its plain
    spread (0.070 against 0.017) while seed 2 gave 0.58x (0.057 against 0.097); over six seeds
    the fused gap was 1.14x the plain spread in total, and the fused runs' late losses sat on
    either side of a float32 run's as the plain bf16 runs' did (no bias). So the bounds are on the
    seeds' means: of the largest loss gap, and of the running statistics' errors over the layers."""
    cfg = TrainConfig(**dict(conftest.TINY, epochs=25, milestones=(15,), schedule_epochs=25, eval_every=0,
                             bf16=bf16))  # 256 images / batch 32 = 8 steps an epoch: 200 steps
    gaps, spreads, errors, naturals = [], [], [], []
    for seed in (0, 1, 2):
        curves, finals = {}, {}
        for name, changes in {"plain": dict(fused_norm=False), "fused": dict(fused_norm=True),
                              "plain-nchw": dict(fused_norm=False, channels_last=False)}.items():
            seen = []

            class Losses(Callback):
                def on_step_end(self, trainer, out):
                    seen.append(float(out.loss))

            summary = train(cfg.replace(out=str(tmp_path / f"{name}-{seed}"), seed=seed, **changes),
                            callbacks=[Losses()], **QUIET)
            assert summary["compute"]["fused_norm"] is changes["fused_norm"] and summary["steps"] == 200
            curves[name], finals[name] = torch.tensor(seen), torch.load(RunDir(summary["run_dir"]).final_weights)
        assert len(curves["fused"]) == 200
        gap = (curves["fused"] - curves["plain"]).abs()
        assert gap[:8].max() < (2e-2 if bf16 else 1e-4), (seed, gap[:8])  # the first epoch
        gaps.append(gap.max())
        spreads.append((curves["plain-nchw"] - curves["plain"]).abs().max())
        stats = [k for k in finals["fused"] if k.endswith(("running_mean", "running_var"))]
        errors.append(torch.tensor([_rel(finals["fused"][k], finals["plain"][k]) for k in stats]))
        naturals.append(torch.tensor([_rel(finals["plain-nchw"][k], finals["plain"][k]) for k in stats]))
    gap, spread = torch.stack(gaps), torch.stack(spreads)
    assert gap.mean() <= max(2 * spread.mean(), 0.02 if bf16 else 2e-3), (gap, spread)
    # The running statistics after 200 steps, over the layers and seeds: the mean error at most
    # twice the plain runs' mean, and no layer off by more than twice the plain runs' worst layer.
    err, natural = torch.cat(errors), torch.cat(naturals)
    assert err.mean() <= max(2 * natural.mean(), 1e-3), (err, natural)
    assert err.max() <= max(2 * natural.max(), 1e-3), (err, natural)


# --- the compute setting ---------------------------------------------------------------------

AVX2 = Capabilities("cpu", frozenset({"avx2", "fma"}))
NONE = dict(bf16=None, channels_last=None, compile=None, capture=None, threads=None, fused_norm=None)


def test_the_setting_defaults_on_where_it_builds_and_gives_way_to_compile():
    assert resolve(NONE, AVX2, env={})[0].fused_norm is True
    assert resolve(NONE, Capabilities("cuda"), env={})[0].fused_norm is False
    assert resolve(dict(NONE, compile=True), AVX2, env={})[0].fused_norm is False
    no_compiler = Capabilities("cpu", frozenset(), fused_kernel="no C++ compiler found (install g++, or set $CXX)")
    assert resolve(NONE, no_compiler, env={})[0].fused_norm is False
    assert resolve(dict(NONE, fused_norm=False), AVX2, env={})[0].fused_norm is False


@pytest.mark.parametrize("caps, explicit, message", [
    (Capabilities("cpu", fused_kernel="no C++ compiler found (install g++, or set $CXX)"), dict(fused_norm=True),
     r"cannot run here: no C\+\+ compiler found \(install g\+\+, or set \$CXX\); use --no-fused-norm"),
    (Capabilities("cuda"), dict(fused_norm=True), "cannot run here: it runs on the CPU only; use --no-fused-norm"),
    (AVX2, dict(fused_norm=True, compile=True), "cannot both be on .*drop one of them"),
])
def test_asking_for_it_where_it_cannot_run_is_refused(caps, explicit, message):
    with pytest.raises(ConfigError, match=message):
        resolve(dict(NONE, **explicit), caps, env={})


def test_a_checkpoint_from_before_the_setting_resumes_unfused():
    recorded = dict(bf16=False, channels_last=True, compile=False, capture=False, threads=1)
    settings, note = resolve(NONE, AVX2, recorded=recorded, env={})
    assert settings.fused_norm is False and "fused_norm on" in note
    with pytest.raises(ConfigError, match="^fused_norm is on .* started with off"):
        resolve(dict(NONE, fused_norm=True), AVX2, recorded=recorded, env={})


def test_without_a_compiler_the_kernel_says_why(monkeypatch):
    monkeypatch.setattr(fused_norm, "_library", None)
    monkeypatch.setattr(fused_norm, "_failure", None)
    monkeypatch.setattr(fused_norm, "_compiler", lambda: None)
    assert fused_norm.unavailable_reason() == "no C++ compiler found (install g++, or set $CXX)"
    assert fused_norm.library() is None
    bn = nn.BatchNorm2d(4)
    fused_norm.enable(bn)
    x = torch.randn(8, 4, 5, 5)
    assert torch.equal(fused_norm.norm_act(bn, nn.ReLU(), x), torch.relu(nn.BatchNorm2d(4)(x)))  # plain modules


def test_a_broken_compiler_is_reported_not_raised(monkeypatch, tmp_path):
    monkeypatch.setattr(fused_norm, "_library", None)
    monkeypatch.setattr(fused_norm, "_failure", None)
    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\necho 'fake compiler' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(fused_norm, "_compiler", lambda: str(fake))
    monkeypatch.setenv("BNONLY_CACHE", str(tmp_path / "cache"))
    assert "failed to build the fused kernel" in fused_norm.unavailable_reason()


def test_the_library_is_cached_per_source_and_cpu(monkeypatch, tmp_path):
    cxx = fused_norm._compiler()
    source = b'extern "C" int bnonly_norm_act_abi() { return 1; }\n'
    first = fused_norm._build(cxx, source, tmp_path)
    assert fused_norm._build(cxx, source, tmp_path) == first  # built once
    monkeypatch.setattr(fused_norm, "_cpu_flags", lambda: "another cpu")
    assert fused_norm._build(cxx, source, tmp_path) != first  # -march=native code is per CPU
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".so")] == []  # no temporary left


@pytest.mark.compute
def test_the_setting_is_recorded_kept_on_resume_and_leaves_the_identity(tmp_path):
    cfg = TrainConfig(**dict(TINY, out=str(tmp_path)))
    assert cfg.replace(fused_norm=False).run_id == cfg.replace(fused_norm=True).run_id == cfg.run_id
    with pytest.raises(Interrupted):
        train(cfg.replace(fused_norm=False), callbacks=[SignalAt({5})], **QUIET)
    with pytest.raises(ConfigError, match="^fused_norm is on .* started with off"):
        train(cfg.replace(fused_norm=True), **QUIET)
    summary = train(cfg, **QUIET)  # the default would be on: the run keeps what it started with
    assert summary["compute"]["fused_norm"] is False
    assert json.loads((RunDir(summary["run_dir"]).path / "summary.json").read_text())["compute"]["fused_norm"] is False


def test_every_model_family_calls_the_kernel_where_it_should(monkeypatch):
    calls = []
    real = fused_norm._fused
    monkeypatch.setattr(fused_norm, "_fused",
                        lambda norm, x, r, relu: calls.append((relu, r is not None)) or real(norm, x, r, relu))
    # (norm + ReLU, norm + residual + ReLU, norm alone: the CIFAR ResNets' projection shortcuts)
    for name, shape, relu_only, with_add, norm_only in [("cifar_resnet_8_8", (4, 3, 16, 16), 1 + 3, 3, 2),
                                                        ("cifar_vgg_11", (4, 3, 32, 32), 8, 0, 0),
                                                        ("imagenet_resnet_18", (2, 3, 64, 64), 1 + 8, 8, 0)]:
        calls.clear()
        model = create_model(name, 10, seed=0)
        fused_norm.enable(model)
        model(torch.randn(shape))
        counts = (calls.count((True, False)), calls.count((True, True)), calls.count((False, False)))
        assert counts == (relu_only, with_add, norm_only) and len(calls) == sum(counts), name
    compute.Capabilities  # noqa: B018 (the module is part of what this file tests)


def test_a_hook_on_a_projection_shortcut_sees_it_run(monkeypatch):
    model = create_model("cifar_resnet_8_8", 10, seed=0)
    fused_norm.enable(model)
    block = model.blocks[1]
    seen = []
    block.shortcut.register_forward_hook(lambda module, inp, out: seen.append(out.shape))
    fused = []
    real = fused_norm._fused
    monkeypatch.setattr(fused_norm, "_fused", lambda norm, x, r, relu: fused.append(relu) or real(norm, x, r, relu))
    model(torch.randn(4, 3, 16, 16))
    assert seen == [torch.Size([4, 16, 8, 8])]  # the Sequential ran, so its hook saw its output
    assert fused.count(False) == 1  # the other block's projection shortcut still went through the kernel


def test_a_kernel_built_from_another_source_stands_in_inside_using_only():
    """benchmarks/norm_act_bandwidth.py --against REV times another revision's kernel in the same
    process: fused_norm.build compiles a source, fused_norm.using runs the fused path on it."""
    from importlib import resources

    source = resources.files("bnonly").joinpath(fused_norm.SOURCE).read_bytes()
    own = fused_norm.library()
    other = fused_norm.build(source.replace(b"namespace {", b"// another revision\nnamespace {", 1))
    assert other is not own and other._name != own._name  # a library of its own, not the cached one
    x, r, _, (gamma, beta) = _inputs(torch.bfloat16, torch.channels_last, residual=True)
    bn = nn.BatchNorm2d(x.shape[1])
    fused_norm.enable(bn)
    with torch.no_grad():
        bn.weight.copy_(gamma)
        bn.bias.copy_(beta)
    expected = fused_norm.norm_act(bn, nn.ReLU(), x, r)
    with fused_norm.using(other):
        assert fused_norm.library() is other
        assert torch.equal(fused_norm.norm_act(bn, nn.ReLU(), x, r), expected)  # the same source, bit for bit
    assert fused_norm.library() is own


def test_the_bandwidth_benchmark_times_both_revisions(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "r.jsonl"
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "norm_act_bandwidth.py"), "--shape", "4,8,6,6",
                           "--reps", "2", "--rounds", "1", "--threads", "1", "--against", "HEAD", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["shape"] == [4, 8, 6, 6] and result["tensor_MB"] == round(4 * 8 * 6 * 6 * 2 / 1e6, 2)
    cases = result["cases"]
    assert list(cases) == ["copy", "forward", "forward+residual", "backward", "backward+residual"]
    assert "old" not in cases["copy"] and all(c["new"]["ms"] > 0 and c["old"]["ms"] > 0 and c["new_over_old"] > 0
                                              for name, c in cases.items() if name != "copy")
    assert cases["copy"]["new"]["of_copy"] == 1.0 and result["caches"] == "warm"
    cold = subprocess.run([sys.executable, str(repo / "benchmarks" / "norm_act_bandwidth.py"), "--shape", "4,8,6,6",
                           "--reps", "1", "--rounds", "1", "--threads", "1", "--cold", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert cold.returncode == 0 and "cold caches" in cold.stdout, cold.stderr[-2000:]
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["caches"] == "cold" and all(c["new"]["ms"] > 0 for c in result["cases"].values())
    bad = subprocess.run([sys.executable, str(repo / "benchmarks" / "norm_act_bandwidth.py"), "--shape", "4,8"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "expected four positive integers N,C,H,W" in bad.stderr


def test_the_step_ab_benchmark_alternates_two_builds_on_whole_steps(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = repo / "benchmarks" / "ab_kernel_step.py"
    out = tmp_path / "r.jsonl"
    args = ["--against", "HEAD", "--model", "cifar_resnet_8_8", "--batch-size", "16", "--threads", "1",
            "--rounds", "6", "--warmup", "1", "--json", str(out)]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert (r["model"], r["rounds"], r["against"], r["threads"]) == ("cifar_resnet_8_8", 6, "HEAD", 1)
    low, high = r["interval_95"]
    assert r["new_ms"] > 0 and r["old_ms"] > 0 and 0 < low <= r["new_over_old"] <= high
    assert f"speedup {r['new_over_old']:.3f}x" in done.stdout
    bad = subprocess.run([sys.executable, str(script), "--against", "HEAD", "--rounds", "0"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--rounds must be at least 1" in bad.stderr
    # --unfuse: the same kernel, with the projection shortcuts' BatchNorms run as plain modules in one version
    args[:2] = ["--unfuse", "shortcut"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text().splitlines()[-1])
    assert (r["unfuse"], r["unfused_layers"], r["against"]) == ("shortcut", 2, None)
    assert "with 2 BatchNorms unfused" in done.stdout
    args[1] = "nothing-is-called-this"
    none = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert none.returncode == 1 and "no fused BatchNorm of cifar_resnet_8_8 has a name matching it" in none.stderr


def _ab_module():
    import importlib.util
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))  # it imports its sibling norm_act_bandwidth
    try:
        spec = importlib.util.spec_from_file_location("ab_kernel_step", bench_dir / "ab_kernel_step.py")
        ab = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ab)
    finally:
        sys.path.remove(str(bench_dir))
    return ab


def test_the_compiled_copy_keeps_the_kernel_inside_and_trains_as_the_eager_step(monkeypatch, tmp_path):
    """``ab_kernel_step.py --compiled`` compares like with like: under torch.compile every
    BatchNorm still runs the kernel (forward and backward, no graph break back to the plain
    modules), and the two copies' weights stay together step after step."""
    import subprocess
    import sys
    from pathlib import Path

    from torch._dynamo.utils import counters

    from bnonly import config as cfgmod
    from bnonly.bench import fast_pipeline

    ab = _ab_module()
    calls = {"forward": 0, "backward": 0}

    def counted(name):
        original = getattr(fused_norm, f"kernel_{name}")

        def call(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)
        return call

    for name in calls:
        monkeypatch.setattr(fused_norm, f"kernel_{name}", counted(name))
    torch.set_num_threads(1)
    cfg = cfgmod.TrainConfig(model="cifar_resnet_8_8", train="bn", data="synthetic", batch_size=16, threads=1,
                             fused_norm=True, out=str(tmp_path), progress=False)
    eager, eager_built = fast_pipeline(cfg, str(tmp_path))
    compiled, compiled_built = fast_pipeline(cfg, str(tmp_path))
    compiled_built.model.compile()
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in eager_built.model.modules())
    counters.clear()
    with ab.KernelInsideCompile():
        for _ in range(3):
            eager.step()
            before = dict(calls)
            compiled.step()
            assert {k: calls[k] - before[k] for k in calls} == {"forward": norms, "backward": norms}
    assert not counters["graph_break"], dict(counters["graph_break"])  # one graph: the kernel is a node in it
    assert fused_norm._fused.__name__ == "_fused"  # the block put the eager path back
    a, b = eager_built.model.state_dict(), compiled_built.model.state_dict()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) < 1e-5
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ab_kernel_step.py"
    done = subprocess.run([sys.executable, str(script), "--compiled", "--model", "cifar_resnet_8_8",
                           "--batch-size", "16", "--threads", "1", "--rounds", "4", "--warmup", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled around the kernel; speedup" in done.stdout, done.stderr[-2000:]
    bad = subprocess.run([sys.executable, str(script), "--against", "HEAD", "--cpp-wrapper"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--cpp-wrapper goes with --compiled" in bad.stderr


def test_the_bootstrap_interval_brackets_the_median():
    ab = _ab_module()
    values = [1.0 + 0.01 * ((7 * i) % 11 - 5) for i in range(101)]  # spread ±5% around 1
    low, high = ab.bootstrap_median_interval(values)
    assert low <= statistics.median(values) <= high and high - low < 0.03
    assert ab.bootstrap_median_interval([2.0] * 9) == (2.0, 2.0)
