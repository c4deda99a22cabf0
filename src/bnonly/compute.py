"""Compute settings: how a run's arithmetic is done, decided once and kept for the run's life.

This module is the device policy: which device ``auto`` means, which models must avoid a memory
format there, and the compute settings. Six settings change how fast a run goes and, slightly,
its floating-point rounding, but not the experiment: bf16 autocast, the channels_last memory
format, ``torch.compile``, capturing the whole step in one CUDA graph, the CPU thread count, and
the fused BatchNorm-ReLU kernel on the CPU (``bnonly.fused_norm``). None of them is part of a
run's identity (its hash). They are resolved here, in this order of precedence:

1. an explicit value in the config (``--bf16``, ``--threads 2``, ...);
2. the value recorded in the run's checkpoint, when the run is resumed: a run keeps the
   numerics it started with even if it moves to a machine whose default differs (an explicit
   value that contradicts the record is an error naming both);
3. the default for this device (:func:`auto_defaults`), which takes the device's capabilities
   as input so the decision is testable for every kind of machine.

The default for bf16 on a CPU follows what measured fastest: on for CPUs with native bf16
(``avx512_bf16`` or ``amx_bf16``; 2,874 against 1,919 img/s in fp32 for BN-only ResNet-14 on a
2-core AMD EPYC), off on AVX2-only CPUs, where bf16 autocast measured about 10x slower. The
environment variable ``BNONLY_CPU_BF16`` (``1``/``0``) replaces that CPU default, for users and
for tests that exercise the other path; it never overrides an explicit flag or a recorded run.

``fused_norm`` is on by default on the CPU wherever its kernel builds (a C++ compiler is there)
and the model is not compiled (inductor fuses the same regions its own way); off on CUDA, where it
does not exist. On the AVX2-only EPYC it made BN-only ResNet-20 steps faster in every case measured
(docs/speed.md); a run checkpointed before the setting existed ran unfused and resumes unfused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from . import fused_norm
from .errors import ConfigError
from .host import read_cpu_flags

ENV_CPU_BF16 = "BNONLY_CPU_BF16"
"""Environment override of the CPU bf16 default: 1 (bf16 autocast) or 0 (float32)."""

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
SETTINGS = ("bf16", "channels_last", "compile", "capture", "threads", "fused_norm")
#: What a checkpoint recorded before a setting existed meant: those runs ran without it.
BEFORE_RECORDED = {"fused_norm": False}


def resolve_device(name: str) -> torch.device:
    """``auto`` is the GPU when there is one, else the CPU; a named GPU must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu")
    return device


def nchw_only_reason(model: nn.Module, device: torch.device, name: str) -> str | None:
    """Why ``model`` must train in NCHW on ``device`` (None: it need not).

    On the CPU, PyTorch 2.13's backward of a 1x1 strided convolution with fewer than 8 input
    channels in channels_last corrupts the heap ("corrupted size vs. prev_size", then a crash) at
    one thread; a ResNet's downsampling shortcut is one when the width is below 8.
    """
    if device.type != "cpu":
        return None
    thin = any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and m.in_channels < 8
               for m in model.modules())
    if thin:
        return (f"{name} has a 1x1 stride-2 convolution with fewer than 8 input channels, whose channels_last "
                "backward corrupts memory on the CPU (PyTorch 2.13), so it trains in NCHW there")
    # PyTorch 2.13's CPU GroupNorm backward segfaults on channels_last input when only γ/β need
    # gradients; bnonly's own ResNets use models.cifar_resnet.GroupNorm2d, which avoids it.
    if any(type(m) is nn.GroupNorm for m in model.modules()):
        return (f"{name} has an nn.GroupNorm, whose channels_last backward crashes on the CPU (PyTorch 2.13), "
                "so it trains in NCHW there")
    return None


@dataclass(frozen=True)
class Capabilities:
    """What the decision depends on: the device kind and, for a CPU, its feature flags."""

    device_type: str
    cpu_flags: frozenset[str] = frozenset()
    fused_kernel: str | None = None  # why the fused norm-act kernel cannot be built here (None: it can)

    @classmethod
    def of(cls, device_type: str) -> Capabilities:
        if device_type != "cpu":
            return cls(device_type)
        return cls(device_type, read_cpu_flags(), fused_norm.unavailable_reason())

    @property
    def native_bf16(self) -> bool:
        return bool(NATIVE_BF16_FLAGS & self.cpu_flags)

    @property
    def fused_norm_problem(self) -> str | None:
        """Why the fused norm-act kernel cannot run on this device (None: it can)."""
        return "it runs on the CPU only" if self.device_type != "cpu" else self.fused_kernel


def cpu_bf16_override(env: Mapping[str, str] = os.environ) -> bool | None:
    """The value of ``BNONLY_CPU_BF16``, or None when unset."""
    value = env.get(ENV_CPU_BF16, "").strip().lower()
    if not value:
        return None
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ConfigError(f"{ENV_CPU_BF16}={env[ENV_CPU_BF16]!r}: expected 1 (bf16 autocast on the CPU) or 0 (float32)")


@dataclass(frozen=True)
class ComputeSettings:
    bf16: bool
    channels_last: bool
    compile: bool
    capture: bool  # the whole step in one CUDA graph (bnonly.training.graph_step)
    threads: int | None  # None: torch's default, not recorded as a choice
    fused_norm: bool = False  # BatchNorm-ReLU(-add) in one kernel on the CPU (bnonly.fused_norm)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = ["bf16 autocast" if self.bf16 else "float32", "channels_last" if self.channels_last else "NCHW",
                 "compiled" if self.compile else "eager"]
        if self.capture:
            parts.append("whole-step graph")
        if self.fused_norm:
            parts.append("fused norm-act")
        if self.threads:
            parts.append(f"{self.threads} thread{'s' * (self.threads != 1)}")
        return ", ".join(parts)


def auto_defaults(caps: Capabilities, env: Mapping[str, str] = os.environ) -> ComputeSettings:
    """The fastest measured settings for a device: channels_last everywhere, eager, torch's
    thread count; bf16 on CUDA and on CPUs with native bf16 (``BNONLY_CPU_BF16`` replaces the
    CPU's choice); the fused norm-act kernel wherever it can run."""
    if caps.device_type == "cuda":
        bf16 = True
    else:
        override = cpu_bf16_override(env)
        bf16 = caps.native_bf16 if override is None else override
    return ComputeSettings(bf16=bf16, channels_last=True, compile=False, capture=False, threads=None,
                           fused_norm=caps.fused_norm_problem is None)


def resolve(explicit: Mapping[str, object], caps: Capabilities, *, recorded: Mapping[str, object] | None = None,
            default_threads: int | None = None, nchw_only: str | None = None,
            env: Mapping[str, str] = os.environ) -> tuple[ComputeSettings, str | None]:
    """The settings a run uses, and a one-line note when a resumed run keeps recorded ones.

    ``explicit``: the config's values (None = not given). ``recorded``: the settings saved with
    the run (None for a new run, or a checkpoint from before they were recorded).
    ``default_threads``: the thread count to use when neither says (a sweep's share of the cores).
    ``nchw_only``: why this model must train in NCHW on this device (None: it need not).
    """
    defaults = auto_defaults(caps, env)
    chosen = {}
    kept = []
    for name in SETTINGS:
        given = explicit.get(name)
        saved = None if recorded is None else recorded.get(name, BEFORE_RECORDED.get(name))
        if given is not None and saved is not None and given != saved:
            raise ConfigError(
                f"{name} is {_show(name, given)} on the command line or config, but this run was started with "
                f"{_show(name, saved)} (recorded in its checkpoint); drop the flag to continue as it started, "
                f"or use a new --out to start a new run")
        if given is not None:
            chosen[name] = given
        elif saved is not None:
            chosen[name] = saved
            kept.append(name)
        elif name == "threads":
            chosen[name] = default_threads
        else:
            chosen[name] = getattr(defaults, name)
    if chosen["fused_norm"] and (chosen["compile"] or caps.fused_norm_problem is not None):
        asked = explicit.get("fused_norm") or bool(recorded and recorded.get("fused_norm"))
        if asked and chosen["compile"]:
            raise ConfigError("the fused norm-act kernel and --compile cannot both be on (torch.compile cannot trace "
                              "the kernel, and fuses the same regions its own way): drop one of them")
        if asked:
            raise ConfigError(f"the fused norm-act kernel cannot run here: {caps.fused_norm_problem}; "
                              "use --no-fused-norm (and a new --out for a run that started with it)")
        chosen["fused_norm"] = False  # the default gives way
    if nchw_only and chosen["channels_last"]:
        if explicit.get("channels_last") or (recorded or {}).get("channels_last"):
            raise ConfigError(f"{nchw_only}: use --no-channels-last")
        chosen["channels_last"] = False
    settings = ComputeSettings(**chosen)
    note = None
    if kept:
        differs = [f"{n} {_show(n, getattr(defaults, n))}" for n in kept
                   if n != "threads" and getattr(defaults, n) != chosen[n]]
        note = (f"keeping the compute settings this run started with: {settings.describe()}"
                + (f" (this machine's default would be {', '.join(differs)})" if differs else ""))
    return settings, note


def _show(name: str, value: object) -> str:
    return str(value) if name == "threads" else ("on" if value else "off")
