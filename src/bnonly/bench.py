"""``bnonly bench``: training throughput of bnonly's fast path against the usual way, in one process.

Two pipelines train the same model under the same what-trains spec and batch size:

- **fast**: exactly what ``bnonly train`` runs: ``training.build`` (device-resident uint8 data
  augmented in batch, the measured-fastest memory format and dtype, frozen weights pre-cast
  when that dtype is bf16, optional compile / activation checkpointing) and ``Trainer``'s own
  step, whose optimizer holds only the trainable tensors;
- **conventional**: a torch ``DataLoader`` (all defaults: no workers) over the images with
  per-image PIL transforms (pad-4 random crop, flip, to-tensor, normalize, as torchvision's
  CIFAR recipe), a float32 NCHW eager model and ``SGD(model.parameters())``.

Timed windows alternate between the pipelines, so a machine shared with other jobs slows both
alike; each reports the median images/s over its windows, and the speedup is the median of the
ratios of back-to-back windows. Next to throughput: the peak memory of one step, the counted
FLOPs per image of a step (conv and linear, forward plus the gradients that step actually
computes), and the achieved FLOP rate as a fraction of the matmul peak this run measures on
the device, in the fast path's compute dtype and in bf16.

``--unfused`` adds a third pipeline, the fast path with the plain BatchNorm and ReLU modules in
place of the fused norm-act kernel (``bnonly.fused_norm``), interleaved like the others: the
kernel's own speedup. ``--compiled`` adds the fast path under ``torch.compile`` instead of the
kernel (the two are exclusive: inductor fuses the same regions its own way), so that which of the
two a CPU should default to is measured side by side. The report also times the fast path's data
alone (drawing batches, no step): for a streamed image folder it says whether decoding or compute
bounds a run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from . import config as cfgmod
from .argtypes import option
from .config import above, at_least
from .data import ArrayDataset
from .data.batches import CIFAR_PAD, NORMALIZATIONS
from .errors import BnonlyError
from .host import usable_cores
from .models import create_model
from .rundir import RunDir
from .trainable import configure, trainable_parameters
from .training import Trainer, build, open_data, resolve_device

DEFAULT_DATA = "synthetic:train=4096,test=256,classes=10,size=32"
"""CIFAR-shaped random images: throughput does not depend on pixel values."""


class BenchError(BnonlyError, ValueError):
    """A benchmark that cannot run as asked."""


# --- the conventional pipeline ---------------------------------------------------------------

class PilImages(torch.utils.data.Dataset):
    """The usual per-image pipeline: PIL image -> RandomCrop(size, padding=4) -> RandomHorizontalFlip
    -> ToTensor -> Normalize, drawing from torch's global RNG as torchvision does."""

    def __init__(self, split: ArrayDataset, normalize: str, augment: bool):
        self.images = split.images.permute(0, 2, 3, 1).numpy()  # N x H x W x C for PIL
        self.labels = split.labels
        mean, std = NORMALIZATIONS[normalize]
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i])
        if self.augment:
            w, h = img.size
            img = ImageOps.expand(img, border=CIFAR_PAD, fill=0)
            top, left = (int(v) for v in torch.randint(0, 2 * CIFAR_PAD + 1, (2,)))
            img = img.crop((left, top, left + w, top + h))
            if torch.rand(1) < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous().float().div(255)
        return x.sub_(self.mean).div_(self.std), int(self.labels[i])


# --- pipelines and timing ---------------------------------------------------------------------

@dataclass
class Pipeline:
    """One way of training: ``step()`` fetches a batch and trains on it, returning its size."""

    name: str
    step: Callable[[], int]
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    threads: int | None = None  # CPU threads set before each of its windows (None: leave as is)
    resident: list[torch.Tensor] = field(default_factory=list)  # device-resident data it keeps
    next_batch: Callable[[], int] | None = None  # draws one batch without training on it (the data alone)
    first_step_s: float = 0.0
    rates: list[float] = field(default_factory=list)
    peak_bytes: int = 0


def _cycle(make_iter):
    """Endless batches, epoch after epoch."""
    epoch = 0
    while True:
        yield from make_iter(epoch)
        epoch += 1


def conventional_pipeline(cfg: cfgmod.TrainConfig, split, num_classes: int, device: torch.device) -> Pipeline:
    if not isinstance(split, ArrayDataset):
        raise BenchError("the conventional pipeline needs an in-memory dataset (CIFAR-sized images); "
                         "this data path streams from disk: use --no-conventional")
    model = create_model(cfg.model, num_classes, gamma_init=cfg.gamma_init, seed=cfg.seed)
    configure(model, cfg.train, cfg.effective_selection_seed, bn_affine=cfg.bn_affine)
    model.to(device)
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay) \
        if any(p.requires_grad for p in params) else None
    loader = torch.utils.data.DataLoader(PilImages(split, cfg.normalize, cfg.augment != "none"),
                                         batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    batches = _cycle(lambda epoch: iter(loader))

    def step() -> int:
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        if optimizer:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return len(y)

    return Pipeline("conventional", step, model, optimizer)


def fast_pipeline(cfg: cfgmod.TrainConfig, workdir: str) -> tuple[Pipeline, object]:
    """What ``bnonly train`` runs: ``build`` and the Trainer's step."""
    built = build(cfg)
    trainer = Trainer(cfg, built, RunDir(workdir), log=lambda *a, **k: None)
    built.model.train()
    batches = _cycle(trainer.train_step.epoch)

    def step() -> int:
        return trainer.train_step(next(batches), 0).n

    def next_batch() -> int:
        return len(next(batches)[1])

    resident = []
    if built.device.type != "cpu":
        resident = [t for t in (getattr(built.train_batches, "images", None),
                                getattr(built.train_batches, "labels", None)) if t is not None]
    return Pipeline("fast", step, built.model, trainer.optimizer, resident=resident, next_batch=next_batch), built


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _set_threads(n: int | None) -> None:
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _images_per_s(p: Pipeline, draw: Callable[[], int], times: int, device: torch.device) -> float:
    """Images/s of calling ``draw`` (returns its batch size) ``times`` times on ``p``'s threads,
    synchronised on both ends so queued device work is counted: one clock for steps and data alone."""
    _set_threads(p.threads)
    _sync(device)
    t0 = time.perf_counter()
    images = sum(draw() for _ in range(times))
    _sync(device)
    return images / (time.perf_counter() - t0)


def time_window(p: Pipeline, steps: int, device: torch.device) -> float:
    """Images/s over ``steps`` consecutive steps (batch fetching included)."""
    return _images_per_s(p, p.step, steps, device)


def data_rate(p: Pipeline, batches: int, device: torch.device) -> float:
    """Images/s of drawing ``p``'s training batches alone (decoding, augmentation, transfer): the
    rate the data path could feed a step that cost nothing."""
    return _images_per_s(p, p.next_batch, batches, device)


def warm_up(p: Pipeline, steps: int, device: torch.device) -> None:
    """The first step (compilation, oneDNN primitive creation) is timed on its own."""
    _set_threads(p.threads)
    _sync(device)
    t0 = time.perf_counter()
    p.step()
    _sync(device)
    p.first_step_s = time.perf_counter() - t0
    for _ in range(max(0, steps - 1)):
        p.step()
    _sync(device)


def pick_threads(p: Pipeline, steps: int, device: torch.device, candidates: list[int]) -> dict[int, float]:
    """Images/s of ``p`` at each CPU thread count (best of two interleaved windows); sets the
    fastest as ``p.threads``. On a machine shared with other jobs, fewer threads than cores can
    be several times faster: each OpenMP region waits for its slowest thread."""
    rates: dict[int, float] = {}
    for _ in range(2):
        for n in candidates:
            p.threads = n
            p.step()  # first step at a new thread count re-creates oneDNN primitives
            rates[n] = max(rates.get(n, 0.0), time_window(p, steps, device))
    p.threads = max(rates, key=rates.get)
    return rates


# --- memory, FLOPs, peak ----------------------------------------------------------------------

def _state_bytes(p: Pipeline) -> int:
    """Bytes of what a pipeline keeps between steps: weights, buffers, gradients, optimizer
    state and device-resident data (unique storages)."""
    tensors = list(p.model.parameters()) + list(p.model.buffers()) + list(p.resident)
    tensors += [q.grad for q in p.model.parameters() if q.grad is not None]
    if p.optimizer is not None:
        tensors += [v for s in p.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.numel()}
    return sum(storages.values())


def step_peak_bytes(p: Pipeline, device: torch.device, others: tuple[Pipeline, ...] = ()) -> int:
    """Peak memory of one training step of ``p``. On a GPU: the allocator's peak during the step,
    less what the ``others`` pipelines in this process keep (so CUDA-graph memory pools count).
    On the CPU: what ``p`` keeps between steps plus the highest point of what the step allocates
    on top, from the profiler's record of every allocation and free."""
    _set_threads(p.threads)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        p.step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - sum(_state_bytes(q) for q in others)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        p.step()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    level = transient = 0
    for e in events:
        level += e.nbytes()
        transient = max(transient, level)
    return _state_bytes(p) + transient


def count_step_flops(cfg: cfgmod.TrainConfig, num_classes: int, image_shape: tuple[int, ...]) -> dict:
    """FLOPs per image of one step (conv and linear, multiply-add = 2), counted on shapes alone
    (meta tensors). The backward counts only the gradients it computes: input gradients, plus
    weight gradients of layers that train."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(cfg.model, num_classes, gamma_init=cfg.gamma_init, device="meta")
    configure(model, cfg.train, cfg.effective_selection_seed, bn_affine=cfg.bn_affine)
    x = torch.empty(cfg.batch_size, *image_shape, device="meta")
    y = torch.zeros(cfg.batch_size, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(model(x), y)
        forward = counter.get_total_flops()
        if trainable_parameters(model):
            loss.backward()
        total = counter.get_total_flops()
    return dict(forward=forward / cfg.batch_size, step=total / cfg.batch_size)


def matmul_peak(device: torch.device, dtype: torch.dtype, budget_s: float = 3.0) -> dict:
    """The best FLOP rate of square ``torch.mm`` in ``dtype`` on ``device`` (sizes doubling from 256
    while one product takes under a tenth of the budget; median of repeats per size)."""
    best = dict(flops_per_s=0.0, size=0)
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        once = time.perf_counter() - t0
        reps = max(3, min(50, int(budget_s / 3 / max(once, 1e-6))))
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            times.append(time.perf_counter() - t0)
        rate = 2 * n**3 / statistics.median(times)
        if rate > best["flops_per_s"]:
            best = dict(flops_per_s=rate, size=n)
        if once > budget_s / 10 or n >= (16384 if device.type == "cuda" else 4096):
            return best
        n *= 2


# --- evidence from the profiler ---------------------------------------------------------------

def profile_step(p: Pipeline, device: torch.device, top: int = 12) -> dict:
    """What one step of ``p`` runs: convolution backward calls by output mask (input, weight,
    bias gradients), dtype casts (all, and of tensors shaped as a frozen weight), parameters the
    optimizer holds, frozen parameters holding a gradient, and the ops taking the most time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    _set_threads(p.threads)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        p.step()
        _sync(device)
    params = list(p.model.parameters())
    frozen_shapes = {tuple(q.shape) for q in params if not q.requires_grad and q.dim() >= 2}
    masks: Counter = Counter()
    casts = weight_casts = 0
    for e in prof.events():
        if e.name == "aten::convolution_backward":
            masks[str(e.concrete_inputs[-1]) if e.concrete_inputs else "?"] += 1
        elif e.name == "aten::_to_copy":
            casts += 1
            weight_casts += bool(e.input_shapes) and tuple(e.input_shapes[0]) in frozen_shapes
    held = sum(len(g["params"]) for g in p.optimizer.param_groups) if p.optimizer else 0
    averages = prof.key_averages()
    if device.type == "cpu":
        table = averages.table(sort_by="self_cpu_time_total", row_limit=top)
        evidence = dict(step_s=sum(a.self_cpu_time_total for a in averages) / 1e6,
                        conv_s=sum(a.self_cpu_time_total for a in averages if "convolution" in a.key) / 1e6)
    else:  # on a GPU: the kernels' busy time, and what the CPU spends its time on meanwhile
        table = (averages.table(sort_by="self_device_time_total", row_limit=top) + "\n"
                 + averages.table(sort_by="self_cpu_time_total", row_limit=top))
        kernels = [a for a in averages
                   if a.device_type != DeviceType.CPU and not getattr(a, "is_user_annotation", False)]
        evidence = dict(gpu_busy_s=sum(a.self_device_time_total for a in kernels) / 1e6)
    return dict(**evidence,
        conv_backward_by_mask=dict(masks),
        to_copy_calls=casts,
        frozen_weight_casts=weight_casts,
        optimizer_tensors=held,
        parameter_tensors=len(params),
        trainable_tensors=sum(q.requires_grad for q in params),
        frozen_with_grad=sum(q.grad is not None for q in params if not q.requires_grad),
        top_ops=table,
    )


# --- the benchmark ----------------------------------------------------------------------------

def _thread_candidates() -> list[int]:
    return list(range(1, usable_cores() + 1))


def run(cfg: cfgmod.TrainConfig, *, threads: str | int = "auto", conventional: bool = True, unfused: bool = False,
        compiled: bool = False, warmup: int = 3, windows: int = 5, steps: int = 5, profile: bool = False,
        peak_budget_s: float = 3.0, log=print) -> dict:
    """Benchmark ``cfg``'s fast path (and the conventional pipeline; with ``unfused``, also the fast
    path without the fused norm-act kernel, when the fast path uses it; with ``compiled``, also the
    fast path compiled instead, when it is not compiled already); returns every number measured."""
    device = resolve_device(cfg.device)
    default_threads = torch.get_num_threads()
    dataset = open_data(cfg)
    num_classes = cfg.num_classes or dataset.num_classes
    result = dict(model=cfg.model, train=cfg.train, batch_size=cfg.batch_size, device=str(device),
                  device_name=_device_name(device), default_threads=default_threads,
                  load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    with tempfile.TemporaryDirectory() as workdir:
        fast, built = fast_pipeline(cfg.replace(threads=None, progress=False, out=workdir), workdir)
        result.update(bf16=built.bf16, channels_last=built.channels_last, compile=built.compute.compile,
                      capture=built.compute.capture, fused_norm=built.compute.fused_norm,
                      checkpoint_activations=cfg.checkpoint_activations)
        pipelines = [fast]
        if conventional:
            pipelines.append(conventional_pipeline(cfg, dataset.train, num_classes, device))
        if device.type == "cpu" and threads != "auto":
            fast.threads = int(threads)
        for p in pipelines:
            log(f"warming up {p.name} ...")
            warm_up(p, warmup, device)
        if device.type == "cpu" and threads == "auto":
            rates = pick_threads(fast, steps, device, _thread_candidates())
            result["thread_trials"] = {str(k): round(v, 1) for k, v in rates.items()}
            log(f"threads: {', '.join(f'{k}: {v:.0f} img/s' for k, v in rates.items())} -> {fast.threads}")
        if conventional and device.type == "cpu" and fast.threads not in (None, default_threads):
            # The same conventional pipeline at the fast path's thread count, for a like-for-like ratio.
            same = conventional_pipeline(cfg, dataset.train, num_classes, device)
            same.name, same.threads = f"conventional@{fast.threads}t", fast.threads
            warm_up(same, warmup, device)
            pipelines.append(same)
        if unfused and built.compute.fused_norm:  # the same fast path with the plain BatchNorm and ReLU
            plain, _ = fast_pipeline(cfg.replace(threads=None, progress=False, out=workdir, fused_norm=False), workdir)
            plain.name, plain.threads = "fast-unfused", fast.threads
            warm_up(plain, warmup, device)
            pipelines.append(plain)
        if compiled and not built.compute.compile:  # torch.compile in place of the fused kernel
            comp, _ = fast_pipeline(cfg.replace(threads=None, progress=False, out=workdir, fused_norm=False,
                                                compile=True), workdir)
            comp.name, comp.threads = "fast-compiled", fast.threads
            log("warming up fast-compiled (compiling) ...")
            warm_up(comp, warmup, device)
            pipelines.append(comp)
        for w in range(windows):
            for p in pipelines:
                p.rates.append(time_window(p, steps, device))
            log(f"window {w + 1}/{windows}: " + "  ".join(f"{p.name} {p.rates[-1]:.0f}" for p in pipelines))
        result["data_images_per_s"] = round(data_rate(fast, windows * steps, device), 1)
        for p in pipelines:
            p.peak_bytes = step_peak_bytes(p, device, tuple(q for q in pipelines if q is not p))
        evidence = profile_step(fast, device) if profile else None
        _set_threads(fast.threads)
        compute_dtype = torch.bfloat16 if built.bf16 else torch.float32
        peaks = {str(dt).replace("torch.", ""): matmul_peak(device, dt, peak_budget_s)
                 for dt in dict.fromkeys([compute_dtype, torch.float32, torch.bfloat16])}
    channels = dataset.train.images.shape[1] if isinstance(dataset.train, ArrayDataset) else 3
    flops = count_step_flops(cfg, num_classes, (channels, *dataset.train.image_size))
    rows = []
    for p in pipelines:
        ips = statistics.median(p.rates)
        achieved = flops["step"] * ips
        rows.append(dict(
            pipeline=p.name, threads=p.threads or default_threads, images_per_s=round(ips, 1),
            windows=[round(r, 1) for r in p.rates], peak_mib=round(p.peak_bytes / 2**20, 1),
            first_step_s=round(p.first_step_s, 2), achieved_gflops=round(achieved / 1e9, 2),
            **{f"fraction_of_{k}_peak": round(achieved / v["flops_per_s"], 3) for k, v in peaks.items()},
        ))
    result.update(
        compute_dtype=str(compute_dtype).replace("torch.", ""),
        flops_per_image=flops["step"], forward_flops_per_image=flops["forward"],
        matmul_peak_gflops={k: round(v["flops_per_s"] / 1e9, 2) for k, v in peaks.items()},
        matmul_peak_size={k: v["size"] for k, v in peaks.items()},
        rows=rows, max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    keys = {"conventional": "speedup", "fast-unfused": "speedup_fused", "fast-compiled": "speedup_over_compiled"}
    for other in pipelines[1:]:
        result[keys.get(other.name, "speedup_same_threads")] = paired_speedup(fast.rates, other.rates)
    if evidence:
        if "conv_s" in evidence:  # the convolutions' own rate, and their share of the step
            evidence["conv_gflops"] = round(flops["step"] * cfg.batch_size / max(evidence["conv_s"], 1e-9) / 1e9, 2)
            evidence["conv_share"] = round(evidence["conv_s"] / max(evidence["step_s"], 1e-9), 3)
        result["profile"] = evidence
    return result


def packed(cfg: cfgmod.TrainConfig, runs: int, *, seconds: float = 20.0, warmup: int = 5, log=print) -> dict:
    """Aggregate training img/s of ``runs`` copies of ``cfg``'s fast path at once, one process each
    on the same device (what ``bnonly sweep --runs-per-gpu``, or ``--jobs`` on a CPU, does), against
    one copy alone, measured in the same call. Every process warms up first; the timed windows start
    together. On a CPU where the copies get fewer threads than there are cores, one copy at every
    core is measured too (``wide``, ``factor_vs_wide``): whether a sweep of K runs at cores/K threads
    each gets more done than one run at a time on all of them (each OpenMP region of a lone
    many-threaded run waits for its slowest thread, and its serial parts leave cores idle)."""
    device = resolve_device(cfg.device)
    if device.type == "cpu" and cfg.threads is None:
        cfg = cfg.replace(threads=max(1, usable_cores() // runs))  # K processes share the cores, as a sweep splits them
    result = dict(model=cfg.model, train=cfg.train, batch_size=cfg.batch_size, device=str(device),
                  device_name=_device_name(device), runs=runs, seconds=seconds, threads=cfg.threads)
    cases = [("alone", cfg, 1), ("packed", cfg, runs)]
    if device.type == "cpu" and cfg.threads < usable_cores():
        cases.append(("wide", cfg.replace(threads=usable_cores()), 1))
        result["wide_threads"] = usable_cores()
    for label, c, k in cases:
        rates = _packed_rates(c, k, seconds, warmup)
        result[label] = dict(per_run=[round(r, 1) for r in rates], aggregate=round(sum(rates), 1))
        log(f"{k} run(s) at once, {c.threads or 'default'} thread(s) each: {sum(rates):.0f} img/s in all "
            f"({', '.join(f'{r:.0f}' for r in rates)})")
    result["factor"] = round(result["packed"]["aggregate"] / result["alone"]["aggregate"], 2)
    if "wide" in result:
        result["factor_vs_wide"] = round(result["packed"]["aggregate"] / result["wide"]["aggregate"], 2)
    return result


def _packed_rates(cfg: cfgmod.TrainConfig, k: int, seconds: float, warmup: int) -> list[float]:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # CUDA-safe, and each process has its own torch state
    ready, results = ctx.Barrier(k + 1), ctx.Queue()
    procs = [ctx.Process(target=_packed_worker, args=(cfg.to_dict(), seconds, warmup, ready, results))
             for _ in range(k)]
    for p in procs:
        p.start()
    ready.wait()  # every process built and warmed up: the timed windows begin together
    rates = [results.get() for _ in procs]
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise BenchError(f"a packed benchmark process failed (exit codes {[p.exitcode for p in procs]})")
    return rates


def _packed_worker(config: dict, seconds: float, warmup: int, ready, results) -> None:
    cfg = cfgmod.from_dict(config)
    device = resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as workdir:
        fast, _ = fast_pipeline(cfg.replace(progress=False, out=workdir), workdir)
        for _ in range(warmup):
            fast.step()
        _sync(device)
        ready.wait()
        images, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            images += fast.step()
        _sync(device)
        results.put(images / (time.perf_counter() - start))


def paired_speedup(fast: list[float], other: list[float]) -> float:
    """Median over timed windows of fast/other, each pair measured back to back: on a machine
    whose load drifts, a paired ratio is steadier than a ratio of medians."""
    return round(statistics.median(f / o for f, o in zip(fast, other)), 2)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({len(_thread_candidates())} cores)"
    except OSError:
        pass
    return "cpu"


def format_report(r: dict) -> str:
    dt = r["compute_dtype"]
    head = (f"{r['model']}  train={r['train']}  batch {r['batch_size']}  {r['device_name']}  "
            f"compute {dt}{'  channels_last' if r['channels_last'] else ''}"
            f"{'  compiled' if r['compile'] else ''}{'  fused norm-act' if r.get('fused_norm') else ''}"
            f"{'  checkpointed x' + str(r['checkpoint_activations']) if r['checkpoint_activations'] else ''}")
    peaks = "  ".join(f"{k} {v:.1f} GFLOP/s" for k, v in r["matmul_peak_gflops"].items())
    lines = [head,
             f"counted FLOPs/image of a step: {r['flops_per_image'] / 1e6:.1f} M "
             f"(forward {r['forward_flops_per_image'] / 1e6:.1f} M);  measured matmul peak: {peaks}",
             f"{'pipeline':<18}{'threads':>8}{'img/s':>10}{'peak MiB':>10}{'1st step s':>11}{'GFLOP/s':>9}"
             f"{'% ' + dt + ' peak':>17}{'% bf16 peak':>13}"]
    for row in r["rows"]:
        lines.append(f"{row['pipeline']:<18}{row['threads']:>8}{row['images_per_s']:>10.1f}{row['peak_mib']:>10.1f}"
                     f"{row['first_step_s']:>11.2f}{row['achieved_gflops']:>9.2f}"
                     f"{100 * row[f'fraction_of_{dt}_peak']:>16.1f}%{100 * row['fraction_of_bfloat16_peak']:>12.1f}%")
    if "speedup" in r:
        lines.append(f"fast / conventional (median of paired windows): {r['speedup']:.2f}x"
                     + (f"  (at the same thread count: {r['speedup_same_threads']:.2f}x)"
                        if "speedup_same_threads" in r else ""))
    if "speedup_fused" in r:
        lines.append(f"fast / fast-unfused (the fused norm-act kernel, paired windows): {r['speedup_fused']:.2f}x")
    if "speedup_over_compiled" in r:
        lines.append(f"fast / fast-compiled (torch.compile instead, paired windows): {r['speedup_over_compiled']:.2f}x")
    if "data_images_per_s" in r:
        step_rate = r["rows"][0]["images_per_s"]
        bound = "data" if r["data_images_per_s"] < 1.5 * step_rate else "compute"
        lines.append(f"data path alone: {r['data_images_per_s']:.0f} img/s against {step_rate:.0f} for whole steps: "
                     f"{bound}-bound" + (" (the step waits for batches: more --num-workers or a faster disk)"
                                         if bound == "data" else ""))
    lines.append(f"process max RSS {r['max_rss_mib']:.0f} MiB;  load average at start {r['load_average']}")
    if "profile" in r:
        e = r["profile"]
        masks = e["conv_backward_by_mask"] or "none visible (compiled: the convolutions run inside the graph)"
        lines += [f"profile of one fast step: convolution_backward calls by output mask [input, weight, bias]: "
                  f"{masks};  aten::_to_copy calls: {e['to_copy_calls']} (of frozen-weight shape: "
                  f"{e['frozen_weight_casts']});  optimizer holds "
                  f"{e['optimizer_tensors']} of {e['parameter_tensors']} parameter tensors ({e['trainable_tensors']} "
                  f"trainable);  frozen tensors holding a gradient: {e['frozen_with_grad']}"]
        if "gpu_busy_s" in e:  # busy time near the step time: GPU-bound; far below: launch-bound
            step_s = r["batch_size"] / r["rows"][0]["images_per_s"]
            lines.append(f"GPU kernels busy {1e3 * e['gpu_busy_s']:.2f} ms of a {1e3 * step_s:.2f} ms step "
                         f"({100 * e['gpu_busy_s'] / step_s:.0f}%)")
        if "conv_share" in e:
            lines.append(f"convolutions: {100 * e['conv_share']:.0f}% of the profiled step's CPU time, at "
                         f"{e['conv_gflops']:.1f} GFLOP/s ({100 * e['conv_gflops'] / r['matmul_peak_gflops'][dt]:.0f}% "
                         f"of the {dt} matmul peak); the rest is memory-bound BatchNorm, ReLU, add and data")
        lines.append(e["top_ops"])
    return "\n".join(lines)


def cmd_bench(args) -> int:
    threads = args.threads if args.threads == "auto" else _positive_int(args.threads, "--threads")
    cfg = cfgmod.resolve(
        model=args.model, train=args.train, batch_size=args.batch_size, data=args.data, device=args.device,
        seed=args.seed, compile=args.compile, bf16=args.bf16, channels_last=args.channels_last, capture=args.capture,
        fused_norm=args.fused_norm, checkpoint_activations=args.checkpoint_activations, cache_dir=args.cache_dir,
        num_workers=args.num_workers, progress=False,
    )
    if args.runs > 1:
        result = packed(cfg.replace(threads=None if threads == "auto" else threads), args.runs,
                        seconds=args.seconds, warmup=args.warmup, log=(lambda *a, **k: None) if args.quiet else print)
        print(f"{args.runs} runs of {cfg.model} train={cfg.train} at once on {result['device_name']}: "
              f"{result['packed']['aggregate']:.0f} img/s in all, against {result['alone']['aggregate']:.0f} for one "
              f"alone: {result['factor']:.2f}x"
              + (f"; one run at {result['wide_threads']} threads: {result['wide']['aggregate']:.0f} img/s, "
                 f"{result['factor_vs_wide']:.2f}x" if "wide" in result else ""))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
        return 0
    result = run(cfg, threads=threads, conventional=args.conventional, unfused=args.unfused, compiled=args.compiled,
                 warmup=args.warmup,
                 windows=args.windows,
                 steps=args.steps, profile=args.profile, peak_budget_s=args.peak_seconds,
                 log=(lambda *a, **k: None) if args.quiet else print)
    print(format_report(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps({k: v for k, v in result.items() if k != "profile"} |
                               ({"profile": {k: v for k, v in result["profile"].items() if k != "top_ops"}}
                                if "profile" in result else {})) + "\n")
    return 0


def _positive_int(value: str, flag: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise BenchError(f"{flag} expects a positive integer or 'auto', got {value!r}")
    return n


def add_subcommand(sub) -> None:
    p = sub.add_parser("bench", help="training throughput of the fast path vs the conventional pipeline",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet_20")
    p.add_argument("--train", default="bn", help="what trains (default: bn)")
    p.add_argument("--batch-size", type=option(int, at_least(1)), default=128)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--data", default=DEFAULT_DATA, help=f"dataset (default: {DEFAULT_DATA})")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", default="auto",
                   help="CPU threads of the fast path: N, or auto = the fastest measured (default); "
                        "the conventional pipeline keeps torch's default")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the fast path")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast in the fast path (default: the fast defaults for the device)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last in the fast path (default: the fast defaults for the device)")
    p.add_argument("--capture", action=argparse.BooleanOptionalAction, default=None,
                   help="the whole step in one CUDA graph in the fast path (bnonly.training.graph_step)")
    p.add_argument("--fused-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="the fused BatchNorm-ReLU kernel in the fast path (default: the fast defaults for the device)")
    p.add_argument("--unfused", action="store_true",
                   help="also time the fast path without the fused norm-act kernel, interleaved (its speedup)")
    p.add_argument("--compiled", action="store_true",
                   help="also time the fast path under torch.compile (without the fused kernel), interleaved")
    p.add_argument("--num-workers", type=option(int, at_least(0)), default=4,
                   help="DataLoader workers for streamed image folders (capped at the usable cores)")
    p.add_argument("--runs", type=option(int, at_least(1)), default=1, metavar="K",
                   help="K > 1: aggregate img/s of K runs training at once (one process each, same device) "
                        "against one alone, instead of the fast-vs-conventional comparison")
    p.add_argument("--seconds", type=option(float, above(0)), default=20.0,
                   help="timed seconds per measurement with --runs (default 20)")
    p.add_argument("--checkpoint-activations", type=option(int, at_least(0)), default=0, metavar="SEGMENTS",
                   help="activation checkpointing in the fast path, in this many segments (default 0: off)")
    p.add_argument("--conventional", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the conventional pipeline (default: yes)")
    p.add_argument("--warmup", type=option(int, at_least(0)), default=3, help="untimed steps per pipeline (default 3)")
    p.add_argument("--windows", type=option(int, at_least(1)), default=5, help="timed windows per pipeline (default 5)")
    p.add_argument("--steps", type=option(int, at_least(1)), default=5, help="steps per timed window (default 5)")
    p.add_argument("--peak-seconds", type=option(float, above(0)), default=3.0,
                   help="time budget per matmul size (default 3)")
    p.add_argument("--profile", action="store_true", help="profile one fast step and print the evidence")
    p.add_argument("--json", default=None, help="append the results as one JSON line to this file")
    p.add_argument("--quiet", action="store_true", help="print only the report")
    p.set_defaults(func=cmd_bench)
