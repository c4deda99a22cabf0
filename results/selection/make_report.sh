#!/usr/bin/env bash
# Rebuilds this folder (selection against affine, issue 22) from the runs.
#   Step 1, training (about 19 core-hours on a 2-core AVX2 CPU, one thread per run; re-running
#   skips finished runs and resumes interrupted ones):
#     nice bnonly sweep sweeps/selection_cpu.yaml --jobs 2 --out RUNS_DIR
#   Step 2, this script: analyse (the supermask section: kept weights per layer, their overlap with
#   the initial top-k, kept shares around disabled features), copy the small files into runs/, report.
# Usage, from anywhere: results/selection/make_report.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."    # the repository root: config.json's data path is relative to it
HERE=results/selection
results/publish.sh "$HERE" "${1:-runs/selection}" \
  --title "bnonly: selection against affine (CIFAR-10, 10 epochs)" --note "$HERE/notes.md" \
  --sweep sweeps/selection_cpu.yaml
