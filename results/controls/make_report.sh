#!/usr/bin/env bash
# Rebuilds this folder (the controls a skeptic asks for, issue 15) from the runs.
#   Step 1, training (about 1.5 hours on 2 cores; re-running skips finished runs, resumes the rest):
#     nice bnonly sweep sweeps/controls_cpu.yaml --jobs 2 --out RUNS_DIR
#   Step 2, this script: analyse, copy the small files into runs/, report.
# Usage, from anywhere: results/controls/make_report.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."    # the repository root: config.json's data path is relative to it
HERE=results/controls
results/publish.sh "$HERE" "${1:-runs/controls}" \
  --title "bnonly: the controls a skeptic asks for (CIFAR-10, 10 epochs)" --note "$HERE/notes.md" \
  --sweep sweeps/controls_cpu.yaml
