"""``bnonly sweep``: the command line of sweeps, over the local launcher (:mod:`bnonly.sweep`) and
Slurm (:mod:`bnonly.slurm`). It lives apart from both so that imports go one way:
sweep_command -> slurm -> sweep."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from . import config as cfgmod
from . import slurm
from .argtypes import option
from .config import above, at_least
from .errors import EXIT_INTERRUPTED
from .sweep import LocalSweep, SweepError, expand, gpu_count, jobs_for, load_spec, state, status
from .training import preflight


def add_subcommand(sub) -> None:
    p = sub.add_parser("sweep", help="train the runs of a sweep file (a grid of configs) here or on Slurm",
                       description="Expand SPEC_FILE (base: fields, grid: field -> values) into runs and train "
                                   "those not finished yet; see docs on scale-out.")
    p.add_argument("spec", metavar="SPEC_FILE", help="YAML sweep file")
    p.add_argument("--out", default=None, help="output root (default: base's out, else 'runs')")
    p.add_argument("--status", action="store_true",
                   help="show done/running/failed/pending counts and failures; train nothing")
    p.add_argument("--jobs", type=option(int, at_least(1)), default=None,
                   help="runs at once on this machine (local launcher; default 1)")
    p.add_argument("--runs-per-gpu", type=option(int, at_least(1)), default=None, metavar="K",
                   help="K runs at once on every GPU of this machine (local launcher), one process each")
    p.add_argument("--retry-failed", action="store_true", help="train runs recorded as failed again")
    p.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                   help="local: processes here; slurm: a Slurm job array through submitit; submitit-local: "
                        "the slurm launcher's code path run by submitit on this machine (to try a setup)")
    g = p.add_argument_group("slurm launcher")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--time", type=option(int, at_least(1)), default=24 * 60,
                   help="time limit per job in minutes (requeued from its checkpoint when it runs out; default 1440)")
    g.add_argument("--gpus-per-run", type=option(int, at_least(0)), default=1,
                   help="GPUs per run (0: a CPU job); more than 1 trains it with DDP")
    g.add_argument("--tasks-per-run", type=option(int, at_least(1)), default=None,
                   help="processes (DDP ranks) per run (default: one per GPU)")
    g.add_argument("--cpus-per-run", type=option(int, at_least(1)), default=None, help="CPU cores per run")
    g.add_argument("--mem-gb", type=option(float, above(0)), default=None, help="memory per run in GB")
    g.add_argument("--max-parallel", type=option(int, at_least(1)), default=None,
                   help="at most this many array jobs at once")
    g.add_argument("--max-requeues", type=option(int, at_least(0)), default=20,
                   help="give up on a run after this many time-limit requeues")
    g.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="any other submitit Slurm parameter, e.g. --slurm account=myproj --slurm qos=high")
    g.add_argument("--wait", action="store_true", help="wait for the submitted jobs and report their outcomes")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    # Only a local launch can check the device: a Slurm login node may have no GPU.
    check = None if args.status else partial(preflight, check_device=args.launcher == "local")
    cfgs = expand(load_spec(args.spec), args.out, check=check)
    if args.status:
        print(format_status(args.spec, cfgs, status(cfgs)))
        return 0
    if args.launcher == "local":
        jobs = jobs_for(args.jobs, args.runs_per_gpu, gpu_count())
        outcomes = LocalSweep(cfgs, jobs, args.retry_failed).run()
        print("; ".join(f"{len(v)} {k}" for k, v in outcomes.items()))
        if outcomes.get("interrupted") or outcomes.get("not started"):
            return EXIT_INTERRUPTED
        return 1 if outcomes.get("failed") else 0
    wanted = ("pending", "failed") if args.retry_failed else ("pending",)
    todo = [c for c in cfgs if state(c) in wanted]
    if not todo:
        print(f"nothing to submit: {format_counts(status(cfgs))}")
        return 0
    folder = Path(todo[0].out) / ".submitit"
    if args.launcher == "slurm":
        executor = slurm.slurm_executor(folder, partition=args.partition, time_min=args.time,
                                        gpus_per_run=args.gpus_per_run, tasks_per_run=args.tasks_per_run,
                                        cpus_per_run=args.cpus_per_run, mem_gb=args.mem_gb,
                                        max_parallel=args.max_parallel, max_requeues=args.max_requeues,
                                        options=_key_values(args.slurm))
    else:
        executor = slurm.local_executor(folder, time_min=args.time, gpus_per_run=args.gpus_per_run,
                                        tasks_per_run=args.tasks_per_run, max_requeues=args.max_requeues)
    jobs = slurm.submit(todo, executor)
    print(f"submitted {len(jobs)} runs as job(s) {', '.join(sorted({j.job_id.split('_')[0] for j in jobs}))}; "
          f"logs in {folder}; `bnonly sweep {args.spec} --status` shows progress")
    if not args.wait:
        return 0
    results = [slurm.outcome(j) for j in jobs]
    print("; ".join(f"{results.count(r)} {r}" for r in dict.fromkeys(results)))
    return 0 if set(results) <= {"done", "running elsewhere"} else 1


def _key_values(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SweepError(f"--slurm expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def format_counts(st: dict) -> str:
    c = st["counts"]
    return (f"done {c['done']}  running {c['running']}  failed {c['failed']}  pending {c['pending']}"
            + (f" ({st['resumable']} with a checkpoint)" if st["resumable"] else ""))


def format_status(spec: str, cfgs: list[cfgmod.TrainConfig], st: dict) -> str:
    outs = sorted({c.out for c in cfgs})
    lines = [f"{spec}: {len(cfgs)} runs in {', '.join(outs)}", "  " + format_counts(st)]
    if st["failures"]:
        lines.append("failed (bnonly sweep --retry-failed trains them again):")
        lines += [f"  {f['run']}: {f['reason']}" for f in st["failures"]]
    if st["running"]:
        lines.append("running:")
        lines += [f"  {r['run']}: {r['holder']}" + format_progress(r["progress"], "; ") for r in st["running"]]
    if st["stopped"]:
        lines.append("stopped part way (the same command resumes them from their checkpoints):")
        lines += [f"  {r['run']}" + format_progress(r["progress"], ": ") for r in st["stopped"]]
    return "\n".join(lines)


def format_progress(progress: dict | None, lead: str) -> str:
    """'epoch 8/160, 101 s an epoch lately, about 4.4 h left' after ``lead``, or '' before any epoch."""
    if progress is None:
        return ""
    text = f"{lead}epoch {progress['epoch']:g}/{progress['epochs']:g}"
    if progress["seconds_per_epoch"] is not None:
        hours = progress["seconds_left"] / 3600
        left = f"{hours:.1f} h" if hours >= 1 else f"{progress['seconds_left'] / 60:.0f} min"
        text += f", {progress['seconds_per_epoch']:.0f} s an epoch lately, about {left} left at that pace"
    return text
