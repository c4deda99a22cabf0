#!/usr/bin/env bash
# Where a CPU training step's time goes, per thread and per library, sampled by `perf`.
#
# torch's profiler (`bnonly bench --profile`) times the ops the main thread calls; it does not say
# how long the other OpenMP threads sit idle while the main thread runs serial work (Python, the
# autograd engine, allocation, small ops), which on 2 cores bounds a step as much as any kernel.
# This runs `bnonly bench`'s fast path for a while, samples every thread with `perf record` (cpu-clock,
# so it works in VMs without hardware counters), and prints, per thread, the share of its samples
# in each library: `libgomp` on a worker thread is time spent waiting for work.
#
#   benchmarks/step_perf.sh                                   # cifar_resnet_20 BN-only, 2 threads, 5 s
#   SECONDS_SAMPLED=8 benchmarks/step_perf.sh --model cifar_resnet_56 --threads 2
#
# Extra arguments go to `bnonly bench` (default: --model cifar_resnet_20 --train bn --threads 2).
# Needs `perf` (linux-tools); pause other CPU work first, as for any benchmark.
set -euo pipefail
command -v perf >/dev/null || { echo "step_perf.sh: perf not found (install linux-tools / the perf package)" >&2; exit 2; }
sampled=${SECONDS_SAMPLED:-5}
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--model cifar_resnet_20 --train bn --threads 2)
work=$(mktemp -d)
trap 'kill "$bench" 2>/dev/null || true; rm -rf "$work"' EXIT
# Enough windows to outlast warm-up plus the sampled seconds; the bench is stopped once sampled.
bnonly bench "${args[@]}" --data synthetic --no-conventional --windows 400 --steps 2 --peak-seconds 0.1 \
    > "$work/bench.log" 2>&1 &
bench=$!
until grep -q "^window 2/" "$work/bench.log" 2>/dev/null; do
    kill -0 "$bench" 2>/dev/null || { cat "$work/bench.log" >&2; exit 1; }
    sleep 0.5
done
perf record -q -e cpu-clock -F 1000 -o "$work/perf.data" -p "$bench" -- sleep "$sampled" >/dev/null 2>&1
kill "$bench" 2>/dev/null || true
rate=$(grep "^window" "$work/bench.log" | tail -n 3 | sed -E 's/.*fast ([0-9]+).*/\1/' | paste -sd' ')
echo "fast path img/s in the last sampled windows: $rate"
perf script -i "$work/perf.data" -F tid,ip,dso -G 2>/dev/null | python3 -c '
import collections, re, sys
counts = collections.defaultdict(collections.Counter)
for line in sys.stdin:
    parts = line.split()
    if len(parts) < 3:
        continue
    dso = re.sub(r"^.*/", "", parts[-1].strip("()"))
    if re.fullmatch(r"perf-[0-9]+\.map", dso):
        dso = "[JIT code: oneDNN kernels]"
    counts[parts[0]][dso] += 1
everything = sum(sum(c.values()) for c in counts.values())
for tid, c in sorted(counts.items(), key=lambda kv: -sum(kv[1].values())):
    total = sum(c.values())
    print(f"thread {tid}: {total} samples ({100 * total / everything:.0f}% of all)")
    for dso, k in c.most_common():
        if k >= total / 200:
            print(f"  {100 * k / total:6.1f}%  {dso}")
'
