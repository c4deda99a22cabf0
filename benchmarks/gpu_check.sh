#!/usr/bin/env bash
# The prepared GPU check (issue 11), one H100/H200, about 8 minutes in all. In priority order:
#   1. the captured whole step against the eager step on CUDA: 200 steps, same seed, bf16
#      tolerance (pytest tests/test_graph_step.py -k cuda);
#   2. the full 160-epoch BN-only cifar_resnet_56 on CIFAR-10 with the whole step in one CUDA
#      graph (--capture --compile; without --compile if that fails), evaluation every epoch,
#      compilation included: its wall time and final accuracy (summary.json, metrics.jsonl);
#   3. bnonly bench, captured fast path vs the conventional pipeline, cifar_resnet_20/56/110 bn
#      and cifar_resnet_56 all, the first with --profile (where the remaining step time goes);
#   4. bnonly bench --runs 8: the aggregate img/s of 8 BN-only cifar_resnet_20 runs on the GPU at
#      once (one process each) against one alone.
# Results (JSON lines, the markdown table, logs, the run's summary and metrics) go to $OUT
# (default results/gpu_check); the run folder itself to $RUNS (default $OUT/runs). Needs no
# install: it runs the package from src/ with $PY (default python3, the one holding PyTorch).
#
#   benchmarks/gpu_check.sh            # on the GPU machine (CIFAR-10 from $DATA, else the first of
#                                      # ../shared/data, shared/data, gpu_data /cifar10-jpeg)
#   benchmarks/gpu_check.sh --tiny     # CPU dry run of the same steps on tiny synthetic data (~1 min)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu_check}
RUNS=${RUNS:-$OUT/runs}
PY=${PY:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-470}  # seconds for the whole script
mkdir -p "$OUT"
start=$SECONDS
left() { echo $(( BUDGET - (SECONDS - start) )); }
cap() { local want=$1 rem; rem=$(left); echo $(( rem < want ? rem : want )); }

if [[ "${1:-}" == "--tiny" ]]; then
  DEVICE=cpu; TRAIN_MODEL=cifar_resnet_8_8; EPOCHS=1; FAST=(--capture --no-compile)
  DATA="synthetic:train=512,test=256,classes=10,size=32"; BENCH_DATA=$DATA; TRAIN_LIMIT=60
  BENCHES="cifar_resnet_8_8:bn cifar_resnet_8_8:all"; PACK_MODEL=cifar_resnet_8_8; PACK_RUNS=2; PACK_SECONDS=1
  BENCH_ARGS=(--threads 1 --batch-size 32 --warmup 1 --windows 1 --steps 1 --peak-seconds 0.1)
else
  DEVICE=cuda; TRAIN_MODEL=cifar_resnet_56; EPOCHS=160; FAST=(--capture --compile); TRAIN_LIMIT=${TRAIN_LIMIT:-230}
  BENCHES="cifar_resnet_56:bn cifar_resnet_20:bn cifar_resnet_110:bn cifar_resnet_56:all"
  PACK_MODEL=cifar_resnet_20; PACK_RUNS=8; PACK_SECONDS=10
  BENCH_DATA="synthetic:train=8192,test=256,classes=10,size=32"  # throughput does not depend on pixels
  BENCH_ARGS=(--batch-size 128 --warmup 10 --windows 3 --steps 25 --peak-seconds 1)
  if [[ -z "${DATA:-}" ]]; then
    for d in ../shared/data/cifar10-jpeg shared/data/cifar10-jpeg gpu_data/cifar10-jpeg; do [[ -d $d ]] && DATA=$d && break; done
  fi
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt" || true
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

# 1. captured vs eager on CUDA (skipped by pytest on the CPU)
echo "\$ pytest tests/test_graph_step.py"
timeout "$(cap 90)" "$PY" -m pytest -q -p no:cacheprovider tests/test_graph_step.py 2>&1 | tail -n 15 | tee "$OUT/graph_step_tests.log"

# 2. the 160-epoch BN-only run (resumable: a failed compiled attempt is resumed without compile;
#    a resumed run keeps its recorded compute settings, so the fallback is a new --out)
if [[ -n "${DATA:-}" ]]; then
  train=("$PY" -m bnonly train --model "$TRAIN_MODEL" --train bn --epochs "$EPOCHS" --seed 0 --data "$DATA"
         --device "$DEVICE" --no-progress)
  [[ $DEVICE == cpu ]] && train+=(--threads 1)
  echo "\$ ${train[*]} ${FAST[*]} --out $RUNS"
  timeout "$(cap "$TRAIN_LIMIT")" "${train[@]}" "${FAST[@]}" --out "$RUNS" 2>&1 | tee "$OUT/train.log"
  rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 && $rc -ne 124 && ${FAST[*]} == *--compile* && $(left) -gt 200 ]]; then
    echo "compiled captured run failed (exit $rc); training it captured without compile in $RUNS-nocompile"
    timeout "$(cap "$TRAIN_LIMIT")" "${train[@]}" --capture --no-compile --out "$RUNS-nocompile" 2>&1 | tee -a "$OUT/train.log"
  fi
  tail -n 3 "$OUT/train.log" | grep -E "test acc|test_acc" || echo "training did not finish in its time"
  for f in "$RUNS"*/*/summary.json "$RUNS"*/*/metrics.jsonl "$RUNS"*/*/config.json; do
    [[ -f $f ]] && cp "$f" "$OUT/train_$(basename "$(dirname "$(dirname "$f")")")_$(basename "$f")"
  done
else
  echo "no CIFAR-10 found (set DATA=...): skipping the 160-epoch run"
fi

# 3. fast (captured) vs conventional, while time remains; the first bench also profiles
profile=--profile
for item in $BENCHES; do
  model=${item%%:*}; spec=${item##*:}
  if (( $(left) < 100 )); then echo "skipped bench $model $spec: $(left)s left"; continue; fi
  echo "\$ bnonly bench --model $model --train $spec ${FAST[*]} $profile ($(left)s left)"
  timeout "$(cap 90)" "$PY" -m bnonly bench --model "$model" --train "$spec" --device "$DEVICE" --data "$BENCH_DATA" \
    "${FAST[@]}" $profile "${BENCH_ARGS[@]}" --quiet --json "$OUT/bench.jsonl" 2>&1 | tee -a "$OUT/bench.log"
  profile=
done
[[ -f $OUT/bench.jsonl ]] && "$PY" benchmarks/throughput.py --table "$OUT/bench.jsonl" | tee "$OUT/bench_table.md"

# 4. K runs at once on one device against one alone
echo "\$ bnonly bench --runs $PACK_RUNS --model $PACK_MODEL ($(left)s left)"
timeout "$(cap 120)" "$PY" -m bnonly bench --model "$PACK_MODEL" --train bn --device "$DEVICE" --data "$BENCH_DATA" \
  "${FAST[@]}" --runs "$PACK_RUNS" --seconds "$PACK_SECONDS" --warmup 10 --json "$OUT/packed.jsonl" 2>&1 \
  | tee "$OUT/packed.log"
echo "gpu_check done in $(( SECONDS - start ))s"
