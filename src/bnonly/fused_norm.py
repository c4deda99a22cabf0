"""The fused normalization-activation path for CPU training (the ``fused_norm`` compute setting).

Around the convolutions, a BN-only CPU step is memory-bound: BatchNorm's statistics, normalize
and affine, the residual add and the ReLU each read and write whole activation tensors, and their
backwards again. :func:`norm_act` computes ``act(norm(x) + residual)`` for a BatchNorm2d in
training mode followed by a ReLU in one kernel, ``csrc/norm_act.cpp``: forward, one read of x for
the statistics and one read (plus the residual) and one write for the output; backward, two
passes (the statistics of the gradient, then the input gradient), with the ReLU mask recomputed
from x where there is no residual. Statistics, γ/β and their gradients stay float32; activations
stay in the compute dtype (float32 or bf16). The model's code calls :func:`norm_act` where a
normalizer meets its activation, and runs the plain modules unless :func:`enable` has marked
the normalizer (``bnonly.speed.prepare`` does when the setting is on), so the modules, their
parameters and state dicts are the same either way and a run's identity does not change.

Covered: ``nn.BatchNorm2d`` using batch statistics (training mode, or no running statistics)
followed by ``nn.ReLU`` or by no activation (``act=None``: the CIFAR ResNets' projection
shortcuts), on CPU tensors in channels_last or NCHW, float32 or bf16, with or without γ/β.
Everything else (evaluation with running statistics, GroupNorm, LayerNorm, InstanceNorm,
SyncBatchNorm, hooks on the modules, CUDA) runs the plain modules.

The kernel is plain C++ with OpenMP and no torch headers: the system compiler builds it once per
source, flags and CPU in about a second, into ``$BNONLY_CACHE/fused`` (default
``~/.cache/bnonly``), and ctypes calls it on the tensors' memory. Without a compiler
:func:`unavailable_reason` says why and the setting's default is off.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn

from .host import default_cache_dir, read_cpu_flags

SOURCE = "csrc/norm_act.cpp"
#: -ffp-contract=off: the ReLU mask recomputed in the backward must round exactly as the forward did.
CXXFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-std=c++17", "-shared", "-fPIC")
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}

_library: ctypes.CDLL | None = None
_failure: str | None = None


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _cpu_flags() -> str:
    return " ".join(sorted(read_cpu_flags()))


def _build(cxx: str, source: bytes, where: Path) -> Path:
    """Compile ``source`` to a shared library under ``where``, named by everything it depends on
    (source, flags, compiler, CPU: -march=native code must not run on another CPU kind)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(CXXFLAGS).encode(), version.encode(),
                                     _cpu_flags().encode()])).hexdigest()[:16]
    target = where / f"norm_act-{key}.so"
    if target.exists():
        return target
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        src = Path(tmp) / "norm_act.cpp"
        src.write_bytes(source)
        out = Path(tmp) / target.name
        done = subprocess.run([cxx, *CXXFLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
        if done.returncode:
            raise OSError(f"{cxx} failed to build the fused kernel: {done.stderr.strip()[-600:]}")
        os.replace(out, target)  # atomic: a concurrent builder finds a whole library or none
    return target


def library() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None when it cannot be (see :func:`unavailable_reason`)."""
    global _library, _failure
    if _library is not None or _failure is not None:
        return _library
    try:
        _library = build(resources.files("bnonly").joinpath(SOURCE).read_bytes())
    except OSError as e:  # no compiler, or it failed: the message says which
        _failure = str(e)
    return _library


def build(source: bytes, cxx: str | None = None) -> ctypes.CDLL:
    """The kernel compiled from ``source`` (the text of a ``norm_act.cpp``) and loaded; cached like
    the package's own. :func:`library` uses it; ``benchmarks/norm_act_bandwidth.py --against REV``
    loads another revision's source beside it, to time the two in one process."""
    cxx = cxx or _compiler()
    if cxx is None:
        raise OSError("no C++ compiler found (install g++, or set $CXX)")
    lib = ctypes.CDLL(str(_build(cxx, source, default_cache_dir() / "fused")))
    p, i64, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.bnonly_norm_act_forward.argtypes = [i, p, p, p, p, ctypes.c_double, p, p, p, p, i64, i64, i64, i, i, i]
    lib.bnonly_norm_act_backward.argtypes = [i, p, p, p, p, p, p, p, p, p, p, p, i64, i64, i64, i, i, i]
    lib.bnonly_norm_act_forward.restype = lib.bnonly_norm_act_backward.restype = None
    return lib


@contextlib.contextmanager
def using(lib: ctypes.CDLL):
    """Run the fused path on ``lib`` (from :func:`build`) inside the block: for timing two kernel
    sources against each other in one process."""
    global _library
    library()
    before, _library = _library, lib
    try:
        yield lib
    finally:
        _library = before


def unavailable_reason() -> str | None:
    """Why the fused kernel cannot be used on this machine (None: it can; builds it if needed)."""
    library()
    return _failure


def enable(model: nn.Module) -> int:
    """Mark every ``nn.BatchNorm2d`` of ``model`` for the fused path; returns how many. The mark is
    a plain attribute: parameters, buffers and state-dict keys are untouched."""
    marked = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.fused_act = True
            marked += 1
    return marked


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _layout(x: Tensor) -> tuple[int, int, int, int, torch.memory_format] | None:
    """(N, C, S, channels_last, memory format) when the kernel can read ``x`` in place."""
    n, c, h, w = x.shape
    if x.is_contiguous():
        return n, c, h * w, 0, torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return n, c, h * w, 1, torch.channels_last
    return None


def _uses_batch_statistics(norm: nn.BatchNorm2d) -> bool:
    return norm.training or (norm.running_mean is None and norm.running_var is None)


def _fusable(norm: nn.Module, act: nn.Module | None, x: Tensor, residual: Tensor | None) -> bool:
    # The exact type: a subclass swapped in later (the CPU sync_bn's, which reduces statistics over
    # every rank) keeps the mark but not the meaning.
    if not (type(norm) is nn.BatchNorm2d and getattr(norm, "fused_act", False)
            and (act is None or type(act) is nn.ReLU) and _uses_batch_statistics(norm)):
        return False
    if any(m._forward_hooks or m._forward_pre_hooks for m in (norm, act) if m is not None):
        return False  # a hook expects to see the modules run
    if x.device.type != "cpu" or x.dtype not in _DTYPES or x.dim() != 4 or x.numel() == 0 or _layout(x) is None:
        return False
    if x.shape[0] * x.shape[2] * x.shape[3] < 2:  # let BatchNorm refuse one value per channel
        return False
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or residual.device != x.device):
        return False
    return library() is not None


def norm_act(norm: nn.Module, act: nn.Module | None, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """``act(norm(x) + residual)`` (no residual: ``act(norm(x))``; ``act`` None: no activation),
    fused where :func:`enable` marked ``norm`` and the case is covered (see the module docstring),
    else the modules as written."""
    if _fusable(norm, act, x, residual):
        return _fused(norm, x, residual, relu=act is not None)
    out = norm(x)
    out = out if residual is None else out + residual
    return out if act is None else act(out)


def _fused(norm: nn.BatchNorm2d, x: Tensor, residual: Tensor | None, relu: bool) -> Tensor:
    fmt = _layout(x)[4]
    if residual is not None:
        residual = residual.contiguous(memory_format=fmt)
    y, mean, var = _NormReLU.apply(x, norm.weight, norm.bias, residual, norm.eps, relu)
    if norm.training and norm.track_running_stats and norm.running_mean is not None:
        _update_running_stats(norm, mean, var, x.numel() // x.shape[1])
    return y


@torch.no_grad()
def _update_running_stats(norm: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d`` does in training: the running averages move toward the batch's
    mean and unbiased variance by ``momentum`` (a cumulative average when momentum is None)."""
    norm.num_batches_tracked.add_(1)
    factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    norm.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
    norm.running_var.mul_(1 - factor).add_(var, alpha=factor * count / (count - 1))


def kernel_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None, eps: float,
                   relu: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One call of the kernel's forward: (y, mean, biased var, invstd). ``x`` (and ``residual``) in a
    layout :func:`_layout` accepts; γ/β float32 and contiguous, or None. The autograd function below
    calls it, and so does ``benchmarks/ab_kernel_step.py --compiled``'s custom op."""
    n, c, s, cl, _ = _layout(x)
    y = torch.empty_like(x)
    mean, var, invstd = (torch.empty(c, dtype=torch.float32) for _ in range(3))
    library().bnonly_norm_act_forward(
        _DTYPES[x.dtype], _ptr(x), _ptr(residual), _ptr(weight), _ptr(bias), eps, _ptr(y), _ptr(mean),
        _ptr(var), _ptr(invstd), n, c, s, cl, int(relu), torch.get_num_threads())
    return y, mean, var, invstd


def kernel_backward(dy: Tensor, y: Tensor | None, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                    mean: Tensor, invstd: Tensor, relu: bool, *, residual_grad: bool, input_grad: bool,
                    weight_grad: bool, bias_grad: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None,
                                                                  Tensor | None]:
    """One call of the kernel's backward: (gradient of the residual, of x, of γ, of β), each None
    where not asked for. ``y``: the forward's output where it had a residual and a ReLU (the mask),
    else None."""
    n, c, s, cl, fmt = _layout(x)
    dy = dy.to(x.dtype).contiguous(memory_format=fmt)
    g = torch.empty_like(x) if residual_grad else None
    dx = torch.empty_like(x) if input_grad else None
    dw = torch.empty(c, dtype=torch.float32) if weight_grad else None
    db = torch.empty(c, dtype=torch.float32) if bias_grad else None
    if any(t is not None for t in (g, dx, dw, db)):
        library().bnonly_norm_act_backward(
            _DTYPES[x.dtype], _ptr(dy), _ptr(y), _ptr(x), _ptr(weight), _ptr(bias), _ptr(mean), _ptr(invstd),
            _ptr(g), _ptr(dx), _ptr(dw), _ptr(db), n, c, s, cl, int(relu), torch.get_num_threads())
    return g, dx, dw, db


class _NormReLU(torch.autograd.Function):
    """relu(batch_norm(x) + residual) with batch statistics (without the ReLU when ``relu`` is
    False); returns (y, mean, biased var)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None, eps: float,
                relu: bool = True):
        weight = None if weight is None else weight.detach().float().contiguous()
        bias = None if bias is None else bias.detach().float().contiguous()
        y, mean, var, invstd = kernel_forward(x, weight, bias, residual, eps, relu)
        # y only where the backward needs it: the ReLU's mask, which x alone cannot give once a residual was added
        ctx.save_for_backward(x, weight, bias, mean, invstd, y if residual is not None and relu else None)
        ctx.has_residual, ctx.relu = residual is not None, relu
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: Tensor, _mean: Tensor, _var: Tensor):
        x, weight, bias, mean, invstd, y = ctx.saved_tensors
        need_x, need_w, need_b, need_r = ctx.needs_input_grad[:4]
        # the kernel computes the residual's gradient on the way to x's: it needs g whenever x's is asked
        g, dx, dw, db = kernel_backward(dy, y, x, weight, bias, mean, invstd, ctx.relu,
                                        residual_grad=ctx.has_residual and (need_r or need_x), input_grad=need_x,
                                        weight_grad=need_w, bias_grad=need_b)
        return dx, dw, db, (g if need_r else None), None, None
