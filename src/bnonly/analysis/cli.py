"""``bnonly analyze``: analyse finished runs and print what each registered evaluator found."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from .errors import AnalysisError, WeightsAbsent
from .evaluators import DEFAULT_DEAD_SHARE, DEFAULT_DRAWS, DEFAULT_THRESHOLDS, EVALUATORS
from .runs import ANALYSIS_FILE, analyze_run, finished_runs
from .stats import threshold_key


def parse_thresholds(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise AnalysisError(f"--thresholds expects comma-separated numbers, e.g. 0.01,0.05,0.1; got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise AnalysisError(f"--thresholds must be positive numbers; got {text!r}")
    return values


def summary_line(a: dict) -> str:
    """The run's name, then the summary lines of each registered evaluator that has one."""
    lines = [f"{a.get('run', '')}"]
    for entry in EVALUATORS.entries():
        if entry.obj.summary is not None and entry.name in a["sections"]:
            lines += [f"  {line}" for line in entry.obj.summary(a["sections"][entry.name])]
    return "\n".join(lines)


def cmd_analyze(args) -> int:
    thresholds = parse_thresholds(args.thresholds)
    paths = []
    for p in args.run_dirs:
        p = Path(p)
        if (p / "config.json").exists():
            paths.append(p)
        else:
            found = finished_runs(p)
            if not found:
                raise AnalysisError(f"{p} is neither a run folder nor a folder holding finished runs")
            paths.extend(found)
    for p in paths:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", WeightsAbsent)
            result = analyze_run(p, thresholds=thresholds, dead_share=args.dead_share, draws=args.draws,
                                 seed=args.seed, data=args.data, device=args.device, threads=args.threads,
                                 figures=args.figures, force=args.force)
        print(summary_line(result))
        for w in caught:
            if issubclass(w.category, WeightsAbsent):
                print(f"  note: {w.message}")
        print(f"  -> {p / ANALYSIS_FILE}")
    return 0


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="what the normalization layers learned in finished runs: γ/β statistics, disabled features, "
                        "ablation",
        description="Writes analysis.json (one section per registered evaluator: "
                    f"{', '.join(EVALUATORS.names())}) and analysis_*.png into each run folder and prints a summary. "
                    "Sections still fresh (same evaluator version and options) are kept.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="a run folder, or a folder below which every finished run is analysed")
    p.add_argument("--thresholds", default=",".join(map(threshold_key, DEFAULT_THRESHOLDS)),
                   help="|γ| thresholds for 'small γ', comma-separated (default: %(default)s)")
    p.add_argument("--dead-share", type=float, default=DEFAULT_DEAD_SHARE,
                   help="a feature is disabled if it is off (its norm output at most the threshold of the activation "
                        "it feeds, 0 for ReLU and -3 for GELU, at every position) for at least this share of test "
                        "inputs (default: %(default)s)")
    p.add_argument("--draws", type=int, default=DEFAULT_DRAWS,
                   help="random draws for the ablation baseline (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random ablation draws (default: %(default)s)")
    p.add_argument("--data", default=None, help="dataset path, if it moved since training (default: config.json's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write analysis.json only")
    p.add_argument("--force", action="store_true", help="redo every section, even those still fresh")
    p.set_defaults(func=cmd_analyze)
