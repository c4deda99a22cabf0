"""benchmarks/step_perf.sh: where a CPU step's time goes, per thread and library, sampled by perf."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_perf.sh"


def _perf_can_sample() -> bool:
    if shutil.which("perf") is None:
        return False
    done = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _perf_can_sample(), reason="perf is missing or may not sample here (perf_event_paranoid)")
def test_step_perf_splits_every_thread_by_library():
    done = subprocess.run(["bash", str(SCRIPT), "--model", "cifar_resnet_8_8", "--train", "bn", "--threads", "2",
                           "--batch-size", "32"], env={**os.environ, "SECONDS_SAMPLED": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"fast path img/s in the last sampled windows: \d+", done.stdout)
    threads = re.findall(r"^thread \d+: (\d+) samples \((\d+)% of all\)", done.stdout, re.M)
    assert len(threads) >= 2 and sum(int(share) for _, share in threads) in range(98, 103)  # both OpenMP threads
    blocks = re.split(r"^thread .*$", done.stdout, flags=re.M)[1:]
    for block in blocks:  # each thread's rows: shares of its own samples, largest first, at most 100% in all
        shares = [float(v) for v in re.findall(r"^\s+([\d.]+)%", block, re.M)]
        assert shares == sorted(shares, reverse=True) and 50 < sum(shares) <= 100.05
    assert "libtorch_cpu.so" in done.stdout


def test_step_perf_says_when_perf_is_missing(tmp_path):
    bash = shutil.which("bash")
    done = subprocess.run([bash, str(SCRIPT)], env={"PATH": str(tmp_path)}, capture_output=True, text=True)
    assert done.returncode == 2 and "perf not found" in done.stderr
