#!/usr/bin/env bash
# The full-schedule CIFAR-10 study on one GPU, as much of it as fits in a time budget:
#   1. train sweeps/cifar10_full_gpu.yaml (160 epochs; its grids are in priority order: BN-only
#      ResNet-14/32/56/110 seed 0; the baselines on ResNet-14 and -56; BN-only wide ResNet-14 x2
#      and x4; then seeds 1 and 2) with `bnonly sweep --jobs K`: K = RUNS_PER_GPU x #GPUs runs at
#      once as separate processes, slot k on GPU k mod #GPUs, each compiled (torch.compile with CUDA
#      graphs). At the budget the sweep gets SIGTERM (`timeout -s TERM`): the runs checkpoint and
#      exit 75, and the next call with the same RUNS resumes them. Runs that failed compiled are
#      retried eagerly if the sweep ends before the budget;
#   2. `bnonly analyze` every finished run, in priority order, while the others train and after;
#   3. the small files of every run (config.json, summary.json, metrics.jsonl, train.log,
#      analysis.json, analysis_*.png; never *.pt) into $OUT/runs/<run>/, which `bnonly report
#      $OUT/runs` reads, with the sweep's --status, a table of results, nvidia-smi and GPU samples.
#
#   benchmarks/gpu_campaign.sh                 # on the GPU machine, BUDGET=600 s by default
#   BUDGET=36000 RUNS_PER_GPU=6 benchmarks/gpu_campaign.sh   # 10 hours; call again to go on
#   PACK=1 benchmarks/gpu_campaign.sh          # $OUT/runs as one runs.tar.gz: $OUT holds 7 files
#   benchmarks/gpu_campaign.sh --tiny          # CPU dry run: synthetic data, tiny models, 1 epoch
#
# Environment: BUDGET (seconds for the whole script), RESERVE (seconds of it kept for the last
# analyses and the copy), RUNS_PER_GPU (4), OUT (results/gpu_campaign), RUNS (runs/gpu_campaign:
# run folders with checkpoints and weights; git-ignored), PY (python3, the one holding PyTorch),
# DATA (CIFAR-10; default: the sweep file's ../shared/data/cifar10-jpeg if present, else the first
# of shared/data, gpu_data /cifar10-jpeg, else gpu_data/cifar10-jpeg.pack unpacked there, made by
# `python benchmarks/pack_folder.py pack ../shared/data/cifar10-jpeg gpu_data/cifar10-jpeg.pack`),
# COMPILE (1 on CUDA; 0 trains eagerly), PACK (0), SPEC (sweeps/cifar10_full_gpu.yaml).
# data is part of a run's identity: runs on another DATA path get other run folders than the
# paper sweeps' (same experiment; `bnonly report` shows the path as a variant).
# Needs no install: it runs the package from src/ (as benchmarks/gpu_check.sh does).
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
OUT=${OUT:-results/gpu_campaign}
RUNS=${RUNS:-runs/gpu_campaign}
PY=${PY:-python3}
SPEC_SRC=${SPEC:-sweeps/cifar10_full_gpu.yaml}
PACK=${PACK:-0}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$SECONDS
mkdir -p "$OUT" "$RUNS"
LOG=$OUT/campaign.log
: >"$LOG"
say() { echo "[$(( SECONDS - start ))s] $*" | tee -a "$LOG"; }

# The campaign's Python side, on bnonly's public sweep API: write the sweep that runs (data, device,
# compile, tiny models), list finished runs lacking an analysis, copy the small files, tabulate.
read -r -d '' HELPER <<'PYEOF'
import json, shutil, sys
from pathlib import Path
import yaml
from bnonly.analysis import read_analysis
from bnonly.sweep import expand, load_spec

# --tiny: each model of the sweep as a tiny one of the same shape (depth ladder, 2x and 4x width).
TINY = {"cifar_resnet_14": "cifar_resnet_8_8", "cifar_resnet_32": "cifar_resnet_14_8",
        "cifar_resnet_56": "cifar_resnet_20_8", "cifar_resnet_110": "cifar_resnet_26_8",
        "cifar_resnet_14_32": "cifar_resnet_8_16", "cifar_resnet_14_64": "cifar_resnet_8_32"}
SMALL_FILES = ("config.json", "summary.json", "metrics.jsonl", "train.log", "analysis.json")


def read(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def runs(spec, root):
    return [(c, Path(root) / c.run_name) for c in expand(load_spec(spec), out=root)]


def derive(src, dst, root, overrides, tiny):
    spec = load_spec(src)
    base = dict(spec.base, out=root, **json.loads(overrides))
    grids = []
    for grid in spec.grids:
        grid = dict(grid)
        if tiny:
            grid["model"] = list(dict.fromkeys(TINY.get(m, "cifar_resnet_8_8") for m in grid["model"]))
        grids.append(grid)
    body = dict(base=base, grid=grids) | ({"preset": spec.preset} if spec.preset else {})
    header = f"# written by benchmarks/gpu_campaign.sh from {src}\n"
    Path(dst).write_text(header + yaml.safe_dump(body, sort_keys=False))


def unanalyzed(spec, root, bad_file, mark):
    bad = set(Path(bad_file).read_text().split()) if Path(bad_file).exists() else set()
    for _, path in runs(spec, root):
        done = (read(path / "summary.json") or {}).get("status") == "done"
        if done and not (path / mark).exists() and str(path) not in bad:
            print(path)


def state(cfg, path):
    summary, metrics = read(path / "summary.json") or {}, (path / "metrics.jsonl")
    if summary.get("status") == "done":
        return "done"
    if summary.get("status") == "failed":
        return "failed: " + str(summary.get("reason", "")).splitlines()[0][:100]
    if not path.exists():
        return "not started"
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
    return f"interrupted after epoch {lines[-1]['epoch']:g} of {cfg.epochs:g}" if lines else "started, no epoch done"


def collect(spec, root, out, mark):
    target = Path(out) / "runs"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    rows = ["| # | run | state | test top-1 | top-5 | img/s | wall s | disabled features |", "|" + "---|" * 8]
    counts = {}
    for i, (cfg, path) in enumerate(runs(spec, root), 1):
        s = state(cfg, path)
        kind = s.split(":")[0].split(" after")[0]
        counts[kind] = counts.get(kind, 0) + 1
        complete = (path / mark).exists()  # analysis.json and its figures all written
        if path.exists():
            (target / path.name).mkdir(parents=True)
            files = [path / n for n in SMALL_FILES if n != "analysis.json" or complete]
            for f in files + (sorted(path.glob("analysis_*.png")) if complete else []):
                if f.is_file():
                    shutil.copy2(f, target / path.name / f.name)
        summary = read(path / "summary.json") or {}
        analysis = (read_analysis(path) if complete else None) or {"sections": {}}  # any format, as today's
        acc = lambda k: f"{100 * summary[k]:.2f}%" if summary.get(k) is not None and s == "done" else ""
        disabled = analysis["sections"].get("disabled") or {}
        dead = (f"{100 * disabled['fraction_dead']:.1f}%" if disabled.get("fraction_dead") is not None
                else "n/a" if disabled else "")
        rate = f"{summary['images_per_second']:,.0f}" if summary.get("images_per_second") else ""
        wall = f"{summary['wall_seconds']:,.0f}" if summary.get("wall_seconds") else ""
        rows.append(f"| {i} | {path.name} | {s} | {acc('test_acc')} | {acc('test_top5')} | {rate} | {wall} | {dead} |")
    Path(out, "results.md").write_text("\n".join(rows) + "\n")
    analysed = sum(1 for _ in target.glob("*/analysis.json"))
    print(", ".join(f"{v} {k}" for k, v in counts.items()) + f"; {analysed} of {counts.get('done', 0)} done analysed")


cmd, *args = sys.argv[1:]
if cmd == "data":
    print(load_spec(args[0]).base.get("data", ""))
elif cmd == "derive":
    derive(*args[:4], tiny=args[4] == "1")
elif cmd == "unanalyzed":
    unanalyzed(*args)
elif cmd == "collect":
    collect(*args)
PYEOF
helper() { "$PY" -c "$HELPER" "$@"; }

if (( TINY )); then
  BUDGET=${BUDGET:-80}; RESERVE=${RESERVE:-40}; COMPILE=0; JOBS=${RUNS_PER_GPU:-2}; POLL=5
  DATA="synthetic:train=256,test=64,classes=10,size=32"
  OVERRIDES='{"data": "'$DATA'", "device": "cpu", "compile": false, "epochs": 1, "schedule_epochs": 1,
              "milestones": [], "batch_size": 64, "threads": 1}'
  ANALYZE=(--device cpu --threads 1 --draws 2)  # 2 random draws: 7 passes over the test set, not 13
  say "tiny CPU dry run: $(nproc) cores, $JOBS runs at once, budget ${BUDGET}s" | tee "$OUT/gpu.txt"
else
  BUDGET=${BUDGET:-600}; RESERVE=${RESERVE:-90}; COMPILE=${COMPILE:-1}; POLL=15
  nvidia-smi >"$OUT/gpu.txt" 2>&1 || true
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >>"$OUT/gpu.txt" 2>&1 || true
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
  if (( GPUS == 0 )); then
    say "no CUDA GPU visible to $PY: nothing to train (benchmarks/gpu_campaign.sh --tiny is the CPU dry run)"
    exit 2
  fi
  JOBS=$(( ${RUNS_PER_GPU:-4} * GPUS ))
  if [[ -z "${DATA:-}" ]]; then
    wanted=$(helper data "$SPEC_SRC")
    for d in "$wanted" shared/data/cifar10-jpeg gpu_data/cifar10-jpeg; do [[ -n $d && -d $d ]] && DATA=$d && break; done
  fi
  if [[ -z "${DATA:-}" && -f gpu_data/cifar10-jpeg.pack ]]; then
    say "unpacking gpu_data/cifar10-jpeg.pack"
    "$PY" benchmarks/pack_folder.py unpack gpu_data/cifar10-jpeg.pack gpu_data/cifar10-jpeg 2>&1 | tee -a "$LOG" \
      && DATA=gpu_data/cifar10-jpeg
  fi
  if [[ -z "${DATA:-}" ]]; then
    say "no CIFAR-10 found (set DATA=..., or carry gpu_data/cifar10-jpeg.pack): nothing to train"
    exit 2
  fi
  OVERRIDES='{"data": "'$DATA'", "device": "cuda", "compile": '$( (( COMPILE )) && echo true || echo false)'}'
  ANALYZE=(--device cuda --threads 2)
  "$PY" -c "import torch as t; print('torch', t.__version__, 'CUDA', t.version.cuda, t.cuda.get_device_name(0))" 2>&1 \
    | tee -a "$OUT/gpu.txt" "$LOG"
  say "$GPUS GPU(s), $JOBS runs at once, $(nproc) CPU cores, data $DATA, compile $COMPILE, budget ${BUDGET}s"
  # decode the JPEGs into bnonly's cache once, here, instead of in every run at once
  timeout 300 "$PY" -c "import sys; from bnonly.data import open_dataset; d = open_dataset(sys.argv[1]); \
print('data:', d.name, len(d.train), 'train', len(d.test), 'test')" "$DATA" 2>&1 | tee -a "$LOG"
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw --format=csv -l 30 \
    >"$OUT/gpu_util.csv" 2>/dev/null &
  SMI_PID=$!
fi
"$PY" -c "import matplotlib" 2>/dev/null || ANALYZE+=(--no-figures)

SPEC=$OUT/sweep.yaml
helper derive "$SPEC_SRC" "$SPEC" "$RUNS" "$OVERRIDES" "$TINY" || { say "could not write $SPEC"; exit 2; }
BAD=$RUNS/.analysis_failed  # runs whose analysis failed (not for lack of time): not tried again
STOP=$RUNS/.analysis_stop
MARK=.campaign_analysed
rm -f "$STOP"
train_until=$(( start + BUDGET - RESERVE ))
end_at=$(( start + BUDGET - 10 ))   # the last seconds are for status and the copy

# Analyse finished runs, in priority order, until the deadline $1 (a SECONDS value). bnonly analyze
# prints "  -> RUN/analysis.json" once a run's analysis.json and figures are written; only then does
# the run get the $MARK file, so an analysis cut short by the deadline is redone, never copied.
analyze_runs() {  # $1: deadline; the rest: run folders
  local deadline=$1 log rc
  shift
  (( deadline - SECONDS > 5 )) || return 124
  log=$(mktemp)
  timeout -k 5 $(( deadline - SECONDS )) "$PY" -m bnonly analyze "$@" "${ANALYZE[@]}" >"$log" 2>&1
  rc=$?
  cat "$log" >>"$OUT/analyze.log"
  sed -n 's|^  -> \(.*\)/analysis\.json$|\1|p' "$log" | while read -r run; do touch "$run/$MARK"; done
  rm -f "$log"
  return "$rc"
}
# All pending runs in one process; if that fails, one at a time, so one bad run does not hold up the rest.
analyze_pending() {
  local deadline=$1 todo run
  mapfile -t todo < <(helper unanalyzed "$SPEC" "$RUNS" "$BAD" "$MARK")
  (( ${#todo[@]} )) || return 0
  for run in "${todo[@]}"; do rm -f "$run/analysis.json"; done  # left by a cut analysis: redo it, figures too
  analyze_runs "$deadline" "${todo[@]}" && return 0
  for run in "${todo[@]}"; do
    [[ -e $run/$MARK ]] && continue
    (( deadline - SECONDS > 5 )) || return 0
    rm -f "$run/analysis.json"
    analyze_runs "$deadline" "$run" || { (( deadline - SECONDS > 5 )) && echo "$run" >>"$BAD"; }
  done
}
( while [[ ! -e $STOP ]] && (( SECONDS < end_at )); do
    analyze_pending "$end_at"
    for _ in $(seq "$POLL"); do [[ -e $STOP ]] && break; sleep 1; done
  done ) &
ANALYZER=$!

# 1. train until the budget's reserve (checkpoint and exit 75 on TERM; -k if a run does not stop)
sweep() {  # $1: spec file; the rest: extra sweep options
  local spec=$1 rc
  shift
  (( train_until - SECONDS > 30 )) || { say "no time left to train"; return 124; }
  say "\$ bnonly sweep $spec --out $RUNS --jobs $JOBS $* (for $(( train_until - SECONDS ))s)"
  # --foreground: TERM goes to the sweep alone, which passes it on to its runs and waits for them.
  # Sent to the whole process group it also kills the sweep's forkserver, which reports the runs'
  # exits: the sweep then sees exit 255 at once and returns while its runs are still writing their
  # checkpoints (tried: a child exiting 75 after 6 s was reported as 255 after 1.6 s).
  timeout --foreground -s TERM -k 90 $(( train_until - SECONDS )) "$PY" -m bnonly sweep "$spec" --out "$RUNS" \
    --jobs "$JOBS" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  say "sweep exit $rc ($( case $rc in 0) echo all done;; 1) echo some failed;; 75|124) echo stopped at the budget;;
       137) echo killed after not stopping;; *) echo error;; esac))"
  return "$rc"
}
sweep "$SPEC"
rc=$?
if [[ $rc == 1 ]] && (( COMPILE )); then
  # Runs that failed compiled: once more eagerly (compile is not part of a run's identity). A run
  # with a checkpoint recorded as compiled refuses to switch and stays failed.
  EAGER=$RUNS/sweep_eager.yaml
  helper derive "$SPEC" "$EAGER" "$RUNS" '{"compile": false}' 0 && sweep "$EAGER" --retry-failed
fi

# 2. the last analyses, 3. status and the small files
touch "$STOP"
wait "$ANALYZER"
rm -f "$STOP"
analyze_pending "$end_at"
[[ -n "${SMI_PID:-}" ]] && kill "$SMI_PID" 2>/dev/null
"$PY" -m bnonly sweep "$SPEC" --out "$RUNS" --status >"$OUT/sweep_status.txt" 2>&1
tee -a "$LOG" <"$OUT/sweep_status.txt"
counts=$(helper collect "$SPEC" "$RUNS" "$OUT" "$MARK")
if (( PACK )); then
  [[ -f $OUT/analyze.log ]] && mv "$OUT/analyze.log" "$OUT/runs/"
  tar -czf "$OUT/runs.tar.gz" -C "$OUT" runs
  if (( $(stat -c %s "$OUT/runs.tar.gz") > 15 * 1024 * 1024 )); then
    say "runs.tar.gz is over 15 MiB: packed again without the figures (bnonly.analysis.plot_run redraws them)"
    tar -czf "$OUT/runs.tar.gz" -C "$OUT" --exclude='*.png' runs
  fi
  rm -rf "$OUT/runs"
fi
say "gpu_campaign done in $(( SECONDS - start ))s: $counts; results in $OUT"
