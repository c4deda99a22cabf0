"""The fast path: how a built model is prepared so that a BN-only step costs only what it must.

With only BatchNorm γ/β training, every conv and linear weight is a constant. Two consequences
are exploited here or verified (``bnonly bench --profile`` shows the evidence):

- No weight gradients: autograd already runs ``convolution_backward`` with output mask
  ``[True, False, False]`` (input gradient only) for a conv whose weight has
  ``requires_grad=False``, and the optimizer is given only the trainable tensors.
- Weights never change, so they need converting to the compute dtype only once:
  :func:`precast_frozen` keeps a compute-dtype copy of each frozen conv/linear weight. Without it,
  bf16 autocast casts every frozen weight again every step (autocast caches only casts of
  leaf tensors that require grad), one extra kernel per layer per step.

For very deep nets :func:`checkpoint_blocks` trades compute for memory (activation
checkpointing) without disturbing BatchNorm running statistics, and :func:`prepare` applies all
of it, plus ``torch.compile`` when asked, in the order ``bnonly.training.build`` needs.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from . import fused_norm as fused_norm_mod
from .errors import BnonlyError


class SpeedOptionError(BnonlyError, ValueError):
    """A combination of speed options that cannot work on this model or device."""


# --- frozen weights in the compute dtype, cast once ----------------------------------------------

def _refresh_after_load(module: nn.Module, incompatible_keys) -> None:
    module.refresh_compute_copies()


class _Precast:
    """Mixin for a conv/linear whose frozen ``weight``/``bias`` are used through compute-dtype copies.

    The fp32 originals stay the parameters (state dicts, checkpoints and analyses see them
    unchanged); the copies are non-persistent buffers, refreshed after ``load_state_dict`` (a
    resumed run) or by :meth:`refresh_compute_copies` after any other in-place change.
    """

    compute_dtype: torch.dtype

    def refresh_compute_copies(self) -> None:
        self.weight_compute = self.weight.detach().to(self.compute_dtype)
        self.bias_compute = None if self.bias is None else self.bias.detach().to(self.compute_dtype)


class PrecastConv2d(_Precast, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight_compute, self.bias_compute)


class PrecastLinear(_Precast, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_compute, self.bias_compute)


_PRECAST_TYPES = {nn.Conv2d: PrecastConv2d, nn.Linear: PrecastLinear}


def _is_frozen(module: nn.Module) -> bool:
    """Weight and bias are plain parameters that do not train (a parametrized weight, e.g. a
    random subset that trains, is recomputed every step and so is not frozen)."""
    tensors = [module._parameters.get("weight"), module._parameters.get("bias")]
    return isinstance(tensors[0], nn.Parameter) and not any(t is not None and t.requires_grad for t in tensors)


def precast_frozen(model: nn.Module, dtype: torch.dtype) -> int:
    """Give every frozen ``nn.Conv2d``/``nn.Linear`` a copy of its weights in ``dtype``, made once.

    Swapping the module's class keeps its parameters, buffers, hooks and state-dict keys; only
    ``forward`` changes, to use the copies. Call it after moving the model to its device and
    memory format (the copies keep the weight's layout). Returns how many layers were changed.
    """
    changed = 0
    for module in model.modules():
        new_type = _PRECAST_TYPES.get(type(module))
        if new_type is None or not _is_frozen(module):
            continue
        module.__class__ = new_type
        module.compute_dtype = dtype
        module.register_buffer("weight_compute", None, persistent=False)
        module.register_buffer("bias_compute", None, persistent=False)
        module.refresh_compute_copies()
        module.register_load_state_dict_post_hook(_refresh_after_load)
        changed += 1
    return changed


# --- activation checkpointing ----------------------------------------------------------------

class _KeepRunningStats:
    """Restores the BatchNorm buffers of ``modules`` on exit: a recomputed forward in training
    mode would otherwise update the running statistics a second time."""

    def __init__(self, modules: list[nn.Module]):
        self.bns = [m for group in modules for m in group.modules() if isinstance(m, _BatchNorm)]

    def __enter__(self):
        self.saved = [[b.clone() for b in m.buffers()] for m in self.bns]

    def __exit__(self, *exc):
        with torch.no_grad():
            for m, saved in zip(self.bns, self.saved):
                for b, s in zip(m.buffers(), saved):
                    b.copy_(s)


def _recompute_contexts(group: list[nn.Module]):
    return nullcontext(), _KeepRunningStats(group)


def _run(modules: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for m in modules:
        x = m(x)
    return x


class CheckpointedSequential(nn.Sequential):
    """``nn.Sequential`` whose children run in ``segments`` consecutive groups; in training with
    gradients on, only each group's input is kept and its activations are recomputed in the
    backward. The last group runs normally (its activations are needed at once). Same children,
    same state-dict keys, same results (BatchNorm statistics are updated once per step)."""

    def __init__(self, children: nn.Sequential, segments: int):
        super().__init__(OrderedDict(children.named_children()))
        self.segments = segments

    def groups(self) -> list[list[nn.Module]]:
        mods = list(self)
        k = max(1, min(self.segments, len(mods)))
        bounds = [round(i * len(mods) / k) for i in range(k + 1)]
        return [mods[a:b] for a, b in zip(bounds, bounds[1:])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return super().forward(x)
        *saved, last = self.groups()
        for group in saved:
            x = checkpoint(_run, group, x, use_reentrant=False, context_fn=partial(_recompute_contexts, group))
        return _run(last, x)


def checkpoint_blocks(model: nn.Module, segments: int) -> int:
    """Activation checkpointing: each top-level ``nn.Sequential`` of the model (the residual
    stages of the ResNets, the layer stack of VGG) runs in ``segments`` recomputed groups.

    About sqrt(number of blocks) segments minimizes memory (a segment's activations plus one
    input per segment). Returns how many sequences were wrapped.
    """
    if segments < 1:
        raise SpeedOptionError(f"checkpoint segments must be at least 1, got {segments}")
    targets = [(name, child) for name, child in model.named_children()
               if type(child) is nn.Sequential and len(child) >= 2]
    if not targets:
        raise SpeedOptionError(f"{type(model).__name__} has no top-level nn.Sequential of blocks to checkpoint")
    for name, child in targets:
        setattr(model, name, CheckpointedSequential(child, segments))
    return len(targets)


# --- the whole preparation -------------------------------------------------------------------

def compile_options(device: torch.device, capture: bool = False) -> dict:
    """``torch.compile`` settings: on CUDA, CUDA graphs ("reduce-overhead"), because a CIFAR
    ResNet step at batch 128 is hundreds of kernels of a few microseconds each, i.e. bound by
    launches, unless the whole step is captured anyway (``capture``: inductor's kernels then go
    into that one graph); on CPU inductor's default (fused elementwise/BatchNorm code around
    oneDNN convs)."""
    return dict(mode="reduce-overhead") if device.type == "cuda" and not capture else {}


def prepare(model: nn.Module, *, device: torch.device, bf16: bool, compile: bool = False, capture: bool = False,
            checkpoint_segments: int = 0, fused_norm: bool = False) -> nn.Module:
    """Prepare an already configured model (what trains chosen, on its device and memory
    format) for fast training, in place; returns it.

    On CUDA it turns on ``cudnn.benchmark`` (process-wide). bf16: frozen weights pre-cast
    once (:func:`precast_frozen`). fused_norm: BatchNorm2d layers marked for the fused kernel
    (:func:`bnonly.fused_norm.enable`). checkpoint_segments > 0:
    activation checkpointing (:func:`checkpoint_blocks`). compile: ``model.compile`` (in place,
    so state-dict keys do not change), with :func:`compile_options`.
    """
    if device.type == "cuda":  # shapes are fixed: let cuDNN time its algorithms once and keep the fastest
        torch.backends.cudnn.benchmark = True
    if bf16:
        precast_frozen(model, torch.bfloat16)
    if fused_norm:
        if compile:
            raise SpeedOptionError("the fused norm-act kernel cannot be compiled: use one or the other")
        fused_norm_mod.enable(model)
    if checkpoint_segments:
        checkpoint_blocks(model, checkpoint_segments)
    if compile:
        model.compile(**compile_options(device, capture))
    return model
