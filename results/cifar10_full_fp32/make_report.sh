#!/usr/bin/env bash
# Rebuilds this folder (issue 19 item 3: ResNet-14 `bn` and `all` at the paper's full schedule in
# float32, the pair of the bf16 runs in results/cifar10_full) from the runs. Their run names equal
# the bf16 runs' (bf16 is a compute setting, not part of a run's identity), hence their own folder.
#   Step 1, training (`bn`: 29-30 s an epoch at 2 threads on a quiet 2-core AMX Xeon, 42-68 s on
#   busier ones, 8,800 s of wall time with pauses; `all`: 50-76 s an epoch on a busy one, 10,424 s;
#   re-running skips finished runs and resumes interrupted ones):
#     nice bnonly sweep sweeps/cifar10_full_fp32_cpu.yaml --jobs 1 --out RUNS_DIR
#   Step 2, this script: analyse, copy the small files into runs/, report.
# Usage, from anywhere: results/cifar10_full_fp32/make_report.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."    # the repository root: config.json's data path is relative to it
HERE=results/cifar10_full_fp32
results/publish.sh "$HERE" "${1:-runs/cifar10_full_fp32}" \
  --title "bnonly: ResNet-14 in float32 at the paper's full schedule (the bf16 pair)" --note "$HERE/notes.md" \
  --sweep sweeps/cifar10_full_fp32_cpu.yaml
