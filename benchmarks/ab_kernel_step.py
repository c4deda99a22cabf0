#!/usr/bin/env python3
"""Two versions of the fused norm-act path on whole training steps, in one process.

``benchmarks/norm_act_bandwidth.py --against REV`` times single kernel calls; what a change to
``csrc/norm_act.cpp`` is worth to training is its effect on the step, where the calls run between
convolutions that have just written their inputs. On the 2-core VMs here a step's time drifts by
±20% within seconds, so windows of several steps per build compare badly. This alternates single
steps of ``bnonly bench``'s fast path between the working tree's kernel and REV's (order flipped
every round), and reports the median of the per-round ratios with a bootstrap 95% interval:
150 rounds of cifar_resnet_20 (about half a minute) resolve about ±1.2% on the AMX Xeon.

    python benchmarks/ab_kernel_step.py --against HEAD                  # the uncommitted change
    python benchmarks/ab_kernel_step.py --against 52ad0fd --model cifar_resnet_56 --rounds 100 --json r.jsonl

A ratio above 1 means the working tree's kernel makes the step faster. An A/A check (``--against
HEAD`` with no change) should land within its interval of 1.

``--unfuse REGEX`` compares instead, with this tree's kernel, the fused path as it is against the
same with the BatchNorms whose module names match REGEX run as plain modules: what covering them
is worth (``--unfuse 'shortcut'``: the CIFAR ResNets' projection shortcuts).

``--compiled`` compares the eager fused step against the same model under ``torch.compile`` with
the kernel kept inside the graph (registered as two torch custom ops for this benchmark; bnonly
itself refuses compile and the kernel together), i.e. what removing the eager step's Python and
autograd overhead around the kernel and convolutions is worth; ``--cpp-wrapper`` also has
inductor emit its wrapper in C++ instead of Python. A ratio above 1 means the eager step is the
faster. The compiled model is a second copy, trained on the same batches in the same order.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from norm_act_bandwidth import append_json_line, old_source  # noqa: E402

from bnonly import config as cfgmod  # noqa: E402
from bnonly import fused_norm  # noqa: E402
from bnonly.bench import fast_pipeline  # noqa: E402
from bnonly.host import usable_cores  # noqa: E402


def bootstrap_median_interval(values: list[float], draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A 95% interval of the median of ``values``, by resampling them with replacement."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


class Unfused:
    """Inside the block, the marked BatchNorms among ``modules`` run as plain modules."""

    def __init__(self, modules: list):
        self.modules = modules

    def __enter__(self):
        for m in self.modules:
            m.fused_act = False

    def __exit__(self, *exc):
        for m in self.modules:
            m.fused_act = True


_custom_op = None


def kernel_custom_op():
    """The fused kernel as a torch custom op with its autograd (registered once per process), so
    that ``torch.compile`` keeps it as one node; returns ``op(x, weight, bias, residual, eps, relu)
    -> (y, mean, var, invstd)``. Gradients it does not need come back as empty tensors."""
    global _custom_op
    if _custom_op is not None:
        return _custom_op

    @torch.library.custom_op("bnonly_bench::norm_act_forward", mutates_args=())
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, residual: Tensor | None, eps: float,
                relu: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return fused_norm.kernel_forward(x, weight, bias, residual, eps, relu)

    @forward.register_fake
    def _(x, weight, bias, residual, eps, relu):
        return (torch.empty_like(x), *(x.new_empty(x.shape[1], dtype=torch.float32) for _ in range(3)))

    @torch.library.custom_op("bnonly_bench::norm_act_backward", mutates_args=())
    def backward_op(dy: Tensor, y: Tensor | None, x: Tensor, weight: Tensor | None, bias: Tensor | None,
                    mean: Tensor, invstd: Tensor, relu: bool,
                    has_residual: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        grads = fused_norm.kernel_backward(dy, y, x, weight, bias, mean, invstd, relu, residual_grad=has_residual,
                                           input_grad=True, weight_grad=weight is not None, bias_grad=bias is not None)
        return tuple(x.new_empty(0) if t is None else t for t in grads)

    @backward_op.register_fake
    def _(dy, y, x, weight, bias, mean, invstd, relu, has_residual):
        c = x.shape[1]
        return (torch.empty_like(x) if has_residual else x.new_empty(0), torch.empty_like(x),
                x.new_empty(c if weight is not None else 0, dtype=torch.float32),
                x.new_empty(c if bias is not None else 0, dtype=torch.float32))

    def setup_context(ctx, inputs, output):
        x, weight, bias, residual, _eps, relu = inputs
        y, mean, _var, invstd = output
        ctx.save_for_backward(x, weight, bias, mean, invstd, y if residual is not None and relu else None)
        ctx.has_residual, ctx.relu = residual is not None, relu

    def backward(ctx, dy, _mean, _var, _invstd):
        x, weight, bias, mean, invstd, y = ctx.saved_tensors
        g, dx, dw, db = backward_op(dy, y, x, weight, bias, mean, invstd, ctx.relu, ctx.has_residual)
        return (dx, dw if weight is not None else None, db if bias is not None else None,
                g if ctx.has_residual else None, None, None)

    forward.register_autograd(backward, setup_context=setup_context)
    _custom_op = forward
    return forward


class KernelInsideCompile:
    """Inside the block, the fused path calls the kernel through :func:`kernel_custom_op` while
    ``torch.compile`` traces (eager calls are unchanged)."""

    def __enter__(self):
        op, self.eager = kernel_custom_op(), fused_norm._fused

        def fused(norm, x, residual, relu):
            if not torch.compiler.is_compiling():
                return self.eager(norm, x, residual, relu)
            if residual is not None:
                residual = residual.contiguous(memory_format=fused_norm._layout(x)[4])
            weight, bias = (None if p is None else p.float() for p in (norm.weight, norm.bias))
            y, mean, var, _ = op(x, weight, bias, residual, norm.eps, relu)
            if norm.training and norm.track_running_stats and norm.running_mean is not None:
                fused_norm._update_running_stats(norm, mean, var, x.numel() // x.shape[1])
            return y

        fused_norm._fused = fused

    def __exit__(self, *exc):
        fused_norm._fused = self.eager


def measure(against: str | None, model: str, train: str, batch_size: int, threads: int, rounds: int, warmup: int,
            data: str = "synthetic", unfuse: str | None = None, compiled: bool = False,
            cpp_wrapper: bool = False) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    if fused_norm.unavailable_reason():
        sys.exit(f"the fused kernel is not available here: {fused_norm.unavailable_reason()}")
    cfg = cfgmod.TrainConfig(model=model, train=train, data=data, batch_size=batch_size, threads=threads,
                             fused_norm=True)
    seconds: dict[str, list[float]] = {"new": [], "old": []}
    first: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as workdir:
        pipeline, built = fast_pipeline(cfg.replace(out=workdir, progress=False), workdir)
        # version -> (its pipeline, a context manager factory: a generator-based one can be entered only once)
        pipelines = dict.fromkeys(("new", "old"), pipeline)
        if compiled:
            pipelines["old"], other = fast_pipeline(cfg.replace(out=workdir, progress=False), workdir)
            if cpp_wrapper:
                import torch._inductor.config as inductor_config
                inductor_config.cpp_wrapper = True
            other.model.compile()
            versions = {"new": contextlib.nullcontext, "old": KernelInsideCompile}
        elif unfuse is None:
            builds = {"new": fused_norm.library(), "old": fused_norm.build(old_source(against))}
            versions = {k: (lambda lib=lib: fused_norm.using(lib)) for k, lib in builds.items()}
        else:
            pattern = re.compile(unfuse)
            matched = [m for name, m in built.model.named_modules()
                       if getattr(m, "fused_act", False) and pattern.search(name)]
            if not matched:
                sys.exit(f"--unfuse {unfuse!r}: no fused BatchNorm of {model} has a name matching it")
            versions = {"new": lambda: Unfused([]), "old": lambda: Unfused(matched)}
        for k in versions:
            with versions[k]():
                start = time.perf_counter()
                pipelines[k].step()  # the compiled version compiles here
                first[k] = time.perf_counter() - start
                for _ in range(warmup - 1):
                    pipelines[k].step()
        order = list(versions)
        for r in range(rounds):
            for k in order if r % 2 == 0 else order[::-1]:  # neither version always runs right after the other
                with versions[k]():
                    start = time.perf_counter()
                    pipelines[k].step()
                    seconds[k].append(time.perf_counter() - start)
    ratios = [o / n for o, n in zip(seconds["old"], seconds["new"])]
    low, high = bootstrap_median_interval(ratios)
    return {"model": model, "train": train, "batch_size": batch_size, "threads": threads, "rounds": rounds,
            "against": against, "unfuse": unfuse, "compiled": compiled, "cpp_wrapper": cpp_wrapper,
            "first_step_s": {k: round(v, 2) for k, v in first.items()},
            "unfused_layers": len(matched) if unfuse else 0, "data": data,
            "new_ms": round(1e3 * statistics.median(seconds["new"]), 2),
            "old_ms": round(1e3 * statistics.median(seconds["old"]), 2),
            "new_over_old": round(statistics.median(ratios), 4), "interval_95": [round(low, 4), round(high, 4)]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--against", metavar="REV", help="git revision whose kernel source to compare with")
    what.add_argument("--unfuse", metavar="REGEX",
                      help="compare with the BatchNorms whose module names match REGEX run as plain modules")
    what.add_argument("--compiled", action="store_true",
                      help="compare with the same model under torch.compile, the kernel inside the graph")
    p.add_argument("--cpp-wrapper", action="store_true", help="with --compiled: inductor's wrapper in C++")
    p.add_argument("--model", default="cifar_resnet_20")
    p.add_argument("--train", default="bn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data", default="synthetic", help="dataset as bnonly train takes it (default: synthetic)")
    p.add_argument("--threads", type=int, default=None, help="default: the usable cores")
    p.add_argument("--rounds", type=int, default=150, help="alternations, one step of each build (default 150)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per build first, at least 1 (default 5)")
    p.add_argument("--label", default=None, help="what the working tree's kernel changes, kept in the JSON line")
    p.add_argument("--json", default=None, help="append the result as one JSON line here")
    args = p.parse_args(argv)
    if args.cpp_wrapper and not args.compiled:
        p.error("--cpp-wrapper goes with --compiled")
    for flag in ("batch_size", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    r = measure(args.against, args.model, args.train, args.batch_size, args.threads or usable_cores(), args.rounds,
                max(1, args.warmup), args.data, args.unfuse, args.compiled, args.cpp_wrapper) | {"label": args.label}
    print(f"{r['model']} train={r['train']} batch {r['batch_size']}, {r['threads']} threads, {r['rounds']} rounds: "
          f"step {r['new_ms']:.1f} ms with this tree's kernel, {r['old_ms']:.1f} ms "
          + (f"with {r['against']}'s; " if r["against"] else
             f"compiled around the kernel{' (C++ wrapper)' if r['cpp_wrapper'] else ''}; " if r["compiled"] else
             f"with {r['unfused_layers']} BatchNorms unfused; ")
          + f"speedup {r['new_over_old']:.3f}x (95% interval {r['interval_95'][0]:.3f}-{r['interval_95'][1]:.3f})")
    append_json_line(args.json, r)
    return r


if __name__ == "__main__":
    main()
