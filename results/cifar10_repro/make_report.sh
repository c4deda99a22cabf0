#!/usr/bin/env bash
# Rebuilds this folder (the committed CIFAR-10 reproduction report) from the reproduction's runs.
#   Step 1, training (hours on a CPU; re-running skips finished runs and resumes interrupted ones):
#     nice bnonly sweep sweeps/reproduce_cpu.yaml --out /root/bnonly-repro/runs --jobs 1
#   Step 2, this script: analyse every finished run, then gather them into report.md.
# Usage, from anywhere: results/cifar10_repro/make_report.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."    # the repository root: config.json's data path is relative to it
RUNS=${1:-/root/bnonly-repro/runs}
HERE=results/cifar10_repro
nice bnonly analyze "$RUNS" --threads "${THREADS:-1}"
bnonly report "$RUNS" --out "$HERE" --title "bnonly: a first CIFAR-10 reproduction (shortened schedule)" \
  --note "$HERE/notes.md" --sweep sweeps/reproduce_cpu.yaml
