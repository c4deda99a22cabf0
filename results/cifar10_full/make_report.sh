#!/usr/bin/env bash
# Rebuilds this folder (the full-schedule CIFAR-10 report, issue 12) from the runs.
#   Step 1, training (about 2 hours per BN-only ResNet-14 at 1 thread on a 2-core AVX-512 CPU;
#   re-running skips finished runs and resumes interrupted ones):
#     nice bnonly sweep sweeps/cifar10_full_cpu.yaml --jobs 1 --out RUNS_DIR
#   Step 2, this script: analyse, copy the small files into runs/, report.
# Usage, from anywhere: results/cifar10_full/make_report.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."    # the repository root: config.json's data path is relative to it
HERE=results/cifar10_full
results/publish.sh "$HERE" "${1:-runs/cifar10_full}" \
  --title "bnonly: CIFAR-10 at the paper's full schedule (160 epochs)" --note "$HERE/notes.md" \
  --sweep sweeps/cifar10_full_cpu.yaml
