"""The ``bnonly`` command: one console script, one subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import typing
from dataclasses import fields

from . import config as cfgmod
from . import distributed
from ._version import __version__
from .argtypes import option
from .config import at_least
from .errors import BnonlyError, Interrupted, TrainingFailed
from .models import create_model, model_families
from .trainable import configure, layer_breakdown
from .training import count_summary, train

# Modules that each define ``add_subcommand(subparsers)`` for one more subcommand.
EXTRA_SUBCOMMANDS = ["bnonly.analysis", "bnonly.report", "bnonly.sweep_command", "bnonly.bench", "bnonly.compact"]


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, all defaulting to None (= not given)."""
    hints = typing.get_type_hints(cfgmod.TrainConfig)
    for f in fields(cfgmod.TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {cfgmod._jsonable(f.default)})"
        if hints[f.name] in (bool, typing.Optional[bool]):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> cfgmod.TrainConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(cfgmod.TrainConfig)}
    return cfgmod.resolve(args.preset, args.config, **overrides)


def cmd_train(args) -> int:
    cfg = config_from_args(args)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    # Under torchrun only rank 0 reports.
    say = print if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)
    try:
        if args.nproc > 1:  # rank 0 of the launched processes reports
            return distributed.launch(cfg, args.nproc)
        summary = train(cfg)
    except Interrupted as e:
        say(f"interrupted ({e}); checkpoint saved, run the same command again to resume", file=sys.stderr)
        return e.exit_code
    except TrainingFailed as e:
        say(f"run failed: {e} (recorded in summary.json)", file=sys.stderr)
        return e.exit_code
    except BnonlyError as e:
        if os.environ.get("BNONLY_DEBUG"):
            raise
        say(f"bnonly train: error: {e}", file=sys.stderr)
        return e.exit_code
    say(f"test_acc {summary['test_acc']:.4f}  test_top5 {summary['test_top5']:.4f}  "
        f"trainable {summary['trainable_params']:,}/{summary['total_params']:,}  "
        f"{summary['wall_seconds']:.0f} s  {summary['images_per_second']:.0f} img/s  -> {summary['run_dir']}")
    return 0


def cmd_info(args) -> int:
    model = create_model(args.model, args.num_classes, gamma_init=args.gamma_init, seed=args.seed,
                         weight_init=args.weight_init)
    configure(model, args.train, args.seed, bn_affine=args.bn_affine)
    info = dict(model=args.model, train=args.train, **count_summary(model))
    layers = layer_breakdown(model)
    if args.json:
        print(json.dumps(dict(info, layers=layers), indent=2))
        return 0
    width = max(len(r["name"]) for r in layers)
    print(f"{'parameter':<{width}}  {'layer':<12} {'shape':<20} {'total':>12} {'trainable':>10}")
    for r in layers:
        print(f"{r['name']:<{width}}  {r['layer']:<12} {str(tuple(r['shape'])):<20} "
              f"{r['total']:>12,} {r['trainable']:>10,}")
    print()
    for k, v in info.items():
        print(f"{k:<17} {v:,}" if isinstance(v, int) else f"{k:<17} {v}")
    return 0


def cmd_models(args) -> int:
    for family in model_families():
        print(f"{family.name}: {family.help}")
        for pattern in family.patterns:
            print(f"    {pattern}")
        print(f"    e.g. {', '.join(family.examples)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bnonly",
                                     description="Train only BatchNorm of random CNNs, and compare honestly.")
    parser.add_argument("--version", action="version", version=f"bnonly {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run (or resume it, or report it if finished)")
    p.add_argument("--preset", default=None,
                   help=f"recipe to start from: {', '.join(cfgmod.PRESETS)} (default: cifar10)")
    p.add_argument("--config", default=None, help="YAML/JSON file of config fields (flags override it)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--nproc", type=option(int, at_least(1)), default=1,
                   help="train with N processes on this machine (starts torchrun; one GPU each, or gloo on CPU)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("info", help="parameter counts of a model under a what-trains spec")
    p.add_argument("model")
    p.add_argument("--train", default="bn", help="what trains (default: bn)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--gamma-init", default="uniform")
    p.add_argument("--weight-init", default=None, help="weight distribution (default: the family's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-bn-affine", dest="bn_affine", action="store_false")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list the model name patterns")
    p.set_defaults(func=cmd_models)

    for module in EXTRA_SUBCOMMANDS:
        importlib.import_module(module).add_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BnonlyError as e:
        if os.environ.get("BNONLY_DEBUG"):
            raise
        print(f"bnonly {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
