#!/usr/bin/env bash
# Analyse the finished runs of RUNS_DIR, copy their small files (config, summary, metrics, analysis
# and per-run figures; never weights) into HERE/runs/, and build HERE/report.md from those copies,
# so a committed report regenerates from the repository alone:
#   results/publish.sh HERE RUNS_DIR [bnonly report options...]
# Used by each study's make_report.sh. THREADS (default 1) and DRAWS (default 5) go to bnonly analyze.
set -euo pipefail
HERE=$1; RUNS=$2; shift 2
nice bnonly analyze "$RUNS" --threads "${THREADS:-1}" --draws "${DRAWS:-5}"
mkdir -p "$HERE/runs"
for run in "$RUNS"/*/; do
  name=$(basename "$run")
  grep -qs '"status": "done"' "$run/summary.json" || continue
  mkdir -p "$HERE/runs/$name"
  for f in config.json summary.json metrics.jsonl analysis.json "$run"/analysis_*.png; do
    f=$(basename "$f")
    [[ -f $run/$f ]] && cp "$run/$f" "$HERE/runs/$name/"
  done
done
bnonly report "$HERE/runs" --out "$HERE" "$@"
