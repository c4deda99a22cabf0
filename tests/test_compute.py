"""Compute settings: the default for each kind of machine, the override that forces a CPU path,
and a resumed run that keeps the numerics it started with wherever it resumes."""

import conftest
import pytest
import torch
from conftest import QUIET, SignalAt

from bnonly import compute, fused_norm
from bnonly.compute import ENV_CPU_BF16, Capabilities, ComputeSettings, auto_defaults, resolve
from bnonly.config import ConfigError, TrainConfig
from bnonly.rundir import RunDir
from bnonly.training import Interrupted, train

MACHINES = {
    "avx2-only": Capabilities("cpu", frozenset({"sse4_2", "avx", "avx2", "fma"})),
    "avx512_bf16": Capabilities("cpu", frozenset({"avx2", "avx512f", "avx512_bf16"})),
    "amx_bf16": Capabilities("cpu", frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"})),
    "cuda": Capabilities("cuda"),
}


@pytest.mark.parametrize("machine, bf16", [("avx2-only", False), ("avx512_bf16", True), ("amx_bf16", True),
                                           ("cuda", True)])
def test_the_default_follows_the_machine(machine, bf16):
    assert auto_defaults(MACHINES[machine], env={}) == ComputeSettings(bf16=bf16, channels_last=True, compile=False,
                                                                       capture=False, threads=None,
                                                                       fused_norm=machine != "cuda")


@pytest.mark.parametrize("machine", ["avx2-only", "avx512_bf16", "amx_bf16"])
def test_the_environment_forces_either_cpu_path(machine):
    assert auto_defaults(MACHINES[machine], env={ENV_CPU_BF16: "1"}).bf16 is True
    assert auto_defaults(MACHINES[machine], env={ENV_CPU_BF16: "0"}).bf16 is False
    assert auto_defaults(MACHINES[machine], env={ENV_CPU_BF16: " off "}).bf16 is False


def test_the_cpu_override_leaves_cuda_alone_and_refuses_nonsense():
    assert auto_defaults(MACHINES["cuda"], env={ENV_CPU_BF16: "0"}).bf16 is True
    with pytest.raises(ConfigError, match=f"^{ENV_CPU_BF16}='maybe': expected 1 .* or 0"):
        auto_defaults(MACHINES["avx2-only"], env={ENV_CPU_BF16: "maybe"})


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert compute.read_cpu_flags(str(info)) == {"fpu", "avx2", "avx512_bf16"}
    assert compute.read_cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_explicit_beats_recorded_beats_default():
    avx2 = MACHINES["avx2-only"]
    none = dict(bf16=None, channels_last=None, compile=None, capture=None, threads=None)
    settings, note = resolve(none, avx2, env={})
    assert settings == ComputeSettings(False, True, False, False, None, fused_norm=True) and note is None
    settings, note = resolve(none, avx2, default_threads=3, env={})
    assert settings.threads == 3
    recorded = dict(bf16=True, channels_last=False, compile=False, threads=1)  # before capture and fused_norm existed
    settings, note = resolve(none, avx2, recorded=recorded, default_threads=3, env={})
    assert settings == ComputeSettings(True, False, False, False, 1, fused_norm=False)  # it ran unfused
    assert note == ("keeping the compute settings this run started with: bf16 autocast, NCHW, eager, 1 thread "
                    "(this machine's default would be bf16 off, channels_last on, fused_norm on)")
    # An explicit value that agrees with the record is fine; one that contradicts it is refused.
    assert resolve(dict(none, bf16=True), avx2, recorded=recorded, env={})[0].bf16 is True
    with pytest.raises(ConfigError, match="^bf16 is off on the command line or config, but this run was started "
                                          "with on .*drop the flag"):
        resolve(dict(none, bf16=False), avx2, recorded=recorded, env={})
    with pytest.raises(ConfigError, match="^threads is 2 .* started with 1"):
        resolve(dict(none, threads=2), avx2, recorded=recorded, env={})


def test_a_model_that_must_train_in_nchw_falls_back_unless_asked_otherwise():
    none = dict(bf16=None, channels_last=None, compile=None, threads=None)
    settings, _ = resolve(none, MACHINES["avx2-only"], nchw_only="thin conv", env={})
    assert settings.channels_last is False
    with pytest.raises(ConfigError, match="^thin conv: use --no-channels-last$"):
        resolve(dict(none, channels_last=True), MACHINES["avx2-only"], nchw_only="thin conv", env={})


def test_compute_settings_are_not_part_of_the_identity():
    base = TrainConfig(data="synthetic")
    for change in (dict(bf16=True), dict(bf16=False), dict(channels_last=False), dict(compile=True), dict(capture=True),
                   dict(threads=2), dict(fused_norm=True), dict(fused_norm=False)):
        assert base.replace(**change).run_id == base.run_id, change


# --- a run that moves between machines ---------------------------------------------------------

TINY = dict(conftest.TINY, augment="cifar")


@pytest.mark.compute
@pytest.mark.parametrize("started, resumed", [("1", "0"), ("0", "1")], ids=["bf16-then-fp32-machine",
                                                                            "fp32-then-bf16-machine"])
def test_a_resumed_run_keeps_its_numerics_on_a_machine_with_another_default(tmp_path, monkeypatch, started, resumed):
    monkeypatch.setenv(ENV_CPU_BF16, started)
    straight = train(TrainConfig(**TINY, out=str(tmp_path / "straight")), log=lambda *_: None)
    cfg = TrainConfig(**TINY, out=str(tmp_path / "moved"))
    with pytest.raises(Interrupted):
        train(cfg, callbacks=[SignalAt({5})], **QUIET)

    monkeypatch.setenv(ENV_CPU_BF16, resumed)  # "another machine": its default is the other path
    with pytest.raises(ConfigError, match=f"bf16 is {'off' if started == '1' else 'on'} on the command line.*"
                                          f"started with {'on' if started == '1' else 'off'}"):
        train(cfg.replace(bf16=resumed == "1"), log=lambda *_: None)
    lines = []
    summary = train(cfg, log=lines.append)
    keep = [line for line in lines if line.startswith("keeping the compute settings")]
    assert len(keep) == 1 and f"bf16 {'off' if started == '1' else 'on'})" in keep[0]
    assert summary["compute"] == straight["compute"] == dict(bf16=started == "1", channels_last=True, compile=False,
                                                             capture=False, threads=1,
                                                             fused_norm=fused_norm.unavailable_reason() is None)
    a, b = (torch.load(RunDir(s["run_dir"]).final_weights) for s in (straight, summary))
    assert all(torch.equal(a[k], b[k]) for k in a)  # continued exactly as it would have on its first machine


def test_models_with_a_plain_groupnorm_train_in_nchw_on_the_cpu():
    from torch import nn

    from bnonly.compute import nchw_only_reason
    from bnonly.models import create_model

    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8))
    assert "nn.GroupNorm" in nchw_only_reason(plain, torch.device("cpu"), "mine")
    assert nchw_only_reason(plain, torch.device("cuda"), "mine") is None
    # bnonly's GroupNorm ResNets use GroupNorm2d, which sidesteps the crash: channels_last stays.
    assert nchw_only_reason(create_model("cifar_resnet_8_8_gn4", 4, device="meta"), torch.device("cpu"), "gn") is None


def test_usable_cores_follow_the_affinity_mask_not_the_machine(monkeypatch):
    """A process pinned to 3 of 64 cores (taskset, a Slurm allocation) sizes its threads and
    workers by the 3: the sweep's per-job threads and the benchmark's thread candidates alike."""
    from bnonly import bench, host
    from bnonly.sweep import LocalSweep

    monkeypatch.setattr(host.os, "sched_getaffinity", lambda pid: {5, 9, 17})
    monkeypatch.setattr(host.os, "cpu_count", lambda: 64)
    assert host.usable_cores() == 3
    assert LocalSweep([], jobs=2, log=lambda *_: None).threads == 1
    assert LocalSweep([], jobs=1, log=lambda *_: None).threads == 3
    assert bench._thread_candidates() == [1, 2, 3]
    monkeypatch.delattr(host.os, "sched_getaffinity")  # platforms without affinity masks
    assert host.usable_cores() == 64
