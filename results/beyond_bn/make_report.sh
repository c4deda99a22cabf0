#!/usr/bin/env bash
# Rebuilds this folder (affine-only training beyond BatchNorm, issue 14) from the runs.
#   Step 1, training (about 2 hours on 2 cores; re-running skips finished runs, resumes the rest):
#     nice bnonly sweep sweeps/beyond_bn_cpu.yaml --jobs 2 --out RUNS_DIR
#   Step 2, this script: analyse, copy the small files into runs/, report.
# Usage, from anywhere: results/beyond_bn/make_report.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."    # the repository root: config.json's data path is relative to it
HERE=results/beyond_bn
results/publish.sh "$HERE" "${1:-runs/beyond_bn}" \
  --title "bnonly: affine-only training beyond BatchNorm (CIFAR-10, 5 epochs)" --note "$HERE/notes.md" \
  --sweep sweeps/beyond_bn_cpu.yaml
