#!/usr/bin/env bash
# bnonly as a new user meets it: build the wheel, install it with torch alone into a fresh venv,
# and run every command from an empty folder (so nothing is imported from the checkout). Without
# extras each command must work or fail with one line naming the extra to install; then with all
# extras each must work. Used by .ci/run; by hand: tools/wheel_smoke.sh [WORK_DIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/bnonly-wheel.XXXXXX)}
mkdir -p "$work"; cd "$work"
python3 -m pip wheel -q --disable-pip-version-check --no-deps "$repo" -w dist >/dev/null
wheel=$(ls "$work"/dist/bnonly-*.whl)
rm -rf venv cwd; python3 -m venv venv
venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 "$wheel" 2> >(grep -v "^WARNING: Location" >&2)
export PATH="$work/venv/bin:$PATH"
mkdir -p cwd; cd cwd
DATA=synthetic:train=128,test=64,classes=4,size=16
TINY=(--model cifar_resnet_8_8 --epochs 1 --batch-size 32 --data "$DATA" --augment none --device cpu --threads 1)
fails=0

# ok NAME CMD...: must exit 0.
ok() { local name=$1; shift
  if "$@" >"../$name.out" 2>&1; then echo "ok      $name"; else echo "FAILED  $name (exit $?):"; tail -5 "../$name.out"; fails=$((fails+1)); fi; }
# needs EXTRA NAME CMD...: must exit 2 with one line on stderr naming pip install 'bnonly[EXTRA]'.
needs() { local extra=$1 name=$2; shift 2; local rc=0
  "$@" >"../$name.out" 2>"../$name.err" || rc=$?
  if [[ $rc == 2 && $(wc -l <"../$name.err") == 1 ]] && grep -qF "pip install 'bnonly[$extra]'" "../$name.err"; then
    echo "ok      $name: $(cat "../$name.err")"
  else echo "FAILED  $name (exit $rc, expected 2 and one line naming bnonly[$extra]):"; tail -5 "../$name.err"; fails=$((fails+1)); fi; }

want=$(python3 -c "import re,sys; print(re.search(r'__version__ = \"(.+)\"', open(sys.argv[1]).read())[1])" \
       "$repo/src/bnonly/_version.py")
echo "== bnonly $want from $(basename "$wheel"), no extras ($(python -c 'import torch; print("torch", torch.__version__)'))"
[[ $(bnonly --version) == "bnonly $want" ]] && echo "ok      --version: $(bnonly --version)" || { echo "FAILED  --version"; fails=$((fails+1)); }
ok models bnonly models
ok info bnonly info cifar_resnet_14 --train bn
ok train bnonly train "${TINY[@]}" --train bn --out runs
run=$(ls -d runs/*/)
needs report analyze-figures bnonly analyze runs
ok analyze bnonly analyze runs --no-figures --draws 2
needs report report bnonly report runs --out report
needs tensorboard train-tensorboard bnonly train "${TINY[@]}" --train gamma --log tensorboard --out runs-tb
printf 'base: {model: cifar_resnet_8_8, data: "%s", batch_size: 32, epochs: 1, augment: none, device: cpu, threads: 1}\ngrid: {train: [bn, output]}\n' "$DATA" > sweep.yaml
ok sweep bnonly sweep sweep.yaml --out sweep-runs --jobs 1
needs slurm sweep-submitit bnonly sweep sweep.yaml --out sweep-sub --launcher submitit-local
ok bench bnonly bench --model cifar_resnet_8_8 --data "$DATA" --batch-size 32 --seconds 0.5 --windows 1 --warmup 1 --threads 1 --quiet
ok export bnonly export "$run" --compact run.compact
ok import bnonly import run.compact --out imported
ok python-api python -c "
import bnonly, bnonly.formats, json, sys
r = bnonly.load_run('$run'); c = bnonly.load_run('run.compact')
assert r.done and r.formats['summary'] == bnonly.formats.SUMMARY_FORMAT and r.analysis['format'] == bnonly.formats.ANALYSIS_FORMAT, r.formats
assert c.config.run_id == r.config.run_id and bnonly.schema('summary')['title'].startswith('bnonly summary')
print(bnonly.__version__, r.test_acc)"

echo "== with every extra"
python -m pip install -q --disable-pip-version-check "$wheel[report,slurm,tensorboard]" 2> >(grep -v "^WARNING: Location" >&2)
ok analyze-figures bnonly analyze runs --draws 2
ok report bnonly report runs --out report
ok train-tensorboard bnonly train "${TINY[@]}" --train gamma --log tensorboard --out runs-tb
ok sweep-submitit bnonly sweep sweep.yaml --out sweep-sub --launcher submitit-local
[[ -f report/report.md && -n $(ls runs-tb/*/tensorboard) ]] || { echo "FAILED  report.md or tensorboard events missing"; fails=$((fails+1)); }
echo "wheel smoke: $fails failed (in $work)"
exit $((fails > 0))
