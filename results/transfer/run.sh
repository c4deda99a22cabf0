#!/usr/bin/env bash
# Transfer from a trained run (issue 15): BN "patches" after Mudrakarta et al. 2019, on the shared
# JPEG CIFAR-10 split into two tasks of five classes; 10-epoch schedule (lr x0.1 at 50% and 75%),
# one seed, 1 CPU thread per run (about 30 CPU-minutes in all on a 2-core AVX-512 machine).
#   1. full training of ResNet-14 on task A (airplane, automobile, bird, cat, deer);
#   2. BN-only, and BN + output layer, on task B (dog, frog, horse, ship, truck), starting from
#      that network (--init-from: its final weights; its run id enters the new runs' identity);
#   3. the same two on task B from random initialization, for comparison;
#   4. results/publish.sh: analyse the five runs, copy their small files into runs/, report.
# The source's five-class output layer is kept (the class count is the same): under bn it stays
# frozen, so BN-only must map task B onto task A's head.
# Usage, from anywhere: results/transfer/run.sh [RUNS_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."    # the repository root: the data path is relative to it
RUNS=${1:-runs/transfer}
HERE=results/transfer
A="airplane,automobile,bird,cat,deer"
B="dog,frog,horse,ship,truck"
common=(--model cifar_resnet_14 --data ../shared/data/cifar10-jpeg --epochs 10 --threads 1 --out "$RUNS" --no-progress)
nice bnonly train "${common[@]}" --train all --classes "$A"
SOURCE=$(python3 -c "import bnonly; c = bnonly.TrainConfig(model='cifar_resnet_14', train='all', classes='$A', \
data='../shared/data/cifar10-jpeg', epochs=10, out='$RUNS'); print(f'{c.out}/{c.run_name}')")
for init in "--init-from $SOURCE" ""; do
  # shellcheck disable=SC2086 # $init is two words or none
  nice bnonly train "${common[@]}" --train bn --classes "$B" $init &
  # shellcheck disable=SC2086
  nice bnonly train "${common[@]}" --train bn+output --classes "$B" $init
  wait
done
results/publish.sh "$HERE" "$RUNS" \
  --title "bnonly: transfer by BatchNorm from a trained network (CIFAR-10, 5 + 5 classes, 10 epochs)" --note "$HERE/notes.md"
