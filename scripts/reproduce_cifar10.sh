#!/usr/bin/env bash
# First reproduction on this machine (issue 3): the paper's CIFAR-10 recipe shortened to
# EPOCHS epochs (same lr shape: x0.1 at 50% and 75%), on the shared JPEG CIFAR-10.
# Runs are content-addressed: re-running skips finished runs and resumes interrupted ones.
# Usage: scripts/reproduce_cifar10.sh [OUT] (default results/runs); env EPOCHS, THREADS, DATA.
set -uo pipefail
OUT=${1:-results/runs}
EPOCHS=${EPOCHS:-10}
DATA=${DATA:-../shared/data/cifar10-jpeg}
common=(--epochs "$EPOCHS" --data "$DATA" --out "$OUT" --no-progress)
[ -n "${THREADS:-}" ] && common+=(--threads "$THREADS")
# A failed run is reported and the others go on; launching again retries it.
run() { bnonly train "${common[@]}" "$@" || echo "FAILED (exit $?): $*" >&2; }
# ResNet-14: every what-trains configuration; 2 seeds for bn and all.
for spec in bn all output bn+output random:matched random-per-channel:2; do
  run --model cifar_resnet_14 --train "$spec" --seed 0
done
run --model cifar_resnet_14 --train bn --seed 1
run --model cifar_resnet_14 --train all --seed 1
# Depth trend, BN-only.
for depth in 8 20 32; do
  run --model "cifar_resnet_$depth" --train bn --seed 0
done
