"""The skeptic's controls: weight decay and learning rate of normalization parameters on their
own, BatchNorm statistics frozen or recalibrated, and starting from a trained run. Each takes
effect when asked and changes nothing at its default."""

import shutil

import pytest
import torch
from conftest import QUIET, TINY, SignalAt

from bnonly.config import ConfigError, TrainConfig
from bnonly.models import create_model
from bnonly.rundir import RunDir
from bnonly.trainable import configure
from bnonly.training import Interrupted, train
from bnonly.training.callbacks import RecalibrateBN
from bnonly.training.optimizers import param_groups

GAMMAS = ("bn.weight", "blocks.0.bn1.weight", "blocks.2.bn2.weight")


def tiny(tmp_path, name="runs", **kw):
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **kw})


def weights(summary, which="final"):
    run = RunDir(summary["run_dir"])
    return torch.load(run.final_weights if which == "final" else run.init_weights)


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# --- weight decay and learning rate of γ/β ------------------------------------------------------

def test_norm_parameters_get_their_own_group_only_when_asked():
    model = create_model("cifar_resnet_8_8", 4, seed=0)
    configure(model, "bn+output", 0)
    (one,) = param_groups(model, TrainConfig())
    assert len(one["params"]) == sum(p.requires_grad for p in model.parameters()) and set(one) == {"params"}
    other, norm = param_groups(model, TrainConfig(norm_weight_decay=0, norm_lr_scale=3))
    assert len(other["params"]) == 2 and other.keys() == {"params"}  # the output layer's weight and bias
    assert norm["weight_decay"] == 0 and norm["lr_scale"] == 3 and len(norm["params"]) == len(one["params"]) - 2


def test_an_explicit_norm_weight_decay_equal_to_the_default_trains_identically(tmp_path):
    default = train(tiny(tmp_path, "a"), **QUIET)
    explicit = train(tiny(tmp_path, "b", norm_weight_decay=1e-4), **QUIET)
    assert explicit["run_id"] != default["run_id"] and same(weights(default), weights(explicit))


def test_weight_decay_on_gamma_pulls_it_towards_zero(tmp_path):
    runs = {wd: weights(train(tiny(tmp_path, str(wd), norm_weight_decay=wd, epochs=4, schedule_epochs=4,
                                   milestones=()), **QUIET)) for wd in (0.0, 0.5)}
    for key in GAMMAS:
        assert runs[0.5][key].abs().mean() < 0.8 * runs[0.0][key].abs().mean(), key


def test_norm_lr_scale_multiplies_the_learning_rate_of_gamma_and_beta(tmp_path):
    base = train(tiny(tmp_path, "a", lr=0.1), **QUIET)
    scaled = train(tiny(tmp_path, "b", lr=0.05, norm_lr_scale=2.0), **QUIET)  # BN-only: every tensor is a norm one
    assert same(weights(base), weights(scaled))


# --- BatchNorm statistics --------------------------------------------------------------------------

def test_frozen_statistics_keep_the_affine_and_drop_the_normalization(tmp_path):
    frozen = train(tiny(tmp_path, "f", bn_stats="frozen"), **QUIET)
    final, init = weights(frozen), weights(frozen, "init")
    for key in final:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(final[key], init[key]), key  # never updated
    assert not same({k: final[k] for k in GAMMAS}, {k: init[k] for k in GAMMAS})  # γ trained
    assert frozen["bn_statistics"] == {"train": "running statistics frozen at their initial values",
                                       "eval": "running averages"}
    batch = train(tiny(tmp_path, "b"), **QUIET)
    assert batch["bn_statistics"]["train"] == "batch" and not same(weights(batch), final)


def test_recalibration_is_the_plain_average_over_the_calibration_batches(tmp_path):
    cfg = tiny(tmp_path, "r", recalibrate_bn=3, bf16=False)  # float32: the hand computation below is float32
    summary = train(cfg, **QUIET)
    assert summary["bn_statistics"]["eval"] == "recalibrated over 3 training batches"
    final = weights(summary)
    # Rebuild the trained model and recompute the statistics by hand over the same 3 batches.
    from bnonly.training import build

    built = build(cfg)
    model = built.model
    model.load_state_dict(final)
    bn = model.bn
    feats = []
    hook = bn.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach()))
    model.train()
    with torch.no_grad():
        for _, (x, _) in zip(range(3), built.train_batches.batches(RecalibrateBN.CALIBRATION_EPOCH + 16)):
            model(x)
    hook.remove()
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    torch.testing.assert_close(final["bn.running_mean"], means.mean(0), rtol=1e-5, atol=1e-6)
    assert int(final["bn.num_batches_tracked"]) == 3
    plain = train(tiny(tmp_path, "p", bf16=False), **QUIET)
    assert not torch.equal(weights(plain)["bn.running_mean"], final["bn.running_mean"])
    gammas = lambda w: {k: w[k] for k in GAMMAS}
    assert same(gammas(weights(plain)), gammas(final))  # training itself is unchanged


def test_recalibrated_runs_resume_exactly(tmp_path):
    straight = train(tiny(tmp_path, "a", recalibrate_bn=2), **QUIET)
    cfg = tiny(tmp_path, "b", recalibrate_bn=2)
    with pytest.raises(Interrupted):
        train(cfg, callbacks=[SignalAt({11})], **QUIET)
    resumed = train(cfg, **QUIET)
    assert same(weights(straight), weights(resumed))
    strip = lambda s: [{k: v for k, v in r.items() if k not in ("wall_seconds", "images_per_second")}
                       for r in RunDir(s["run_dir"]).read_metrics()]
    assert strip(straight) == strip(resumed)


# --- starting from a trained run ------------------------------------------------------------------

@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    return train(TrainConfig(**{**TINY, "train": "all", "out": str(root)}), **QUIET)


def test_a_run_starts_from_the_source_runs_final_weights(tmp_path, source):
    cfg = tiny(tmp_path, init_from=source["run_dir"])
    summary = train(cfg, **QUIET)
    assert same(weights(summary, "init"), weights(source))
    assert cfg.run_id != tiny(tmp_path).run_id
    moved = tmp_path / "moved"
    shutil.copytree(source["run_dir"], moved)
    assert tiny(tmp_path, init_from=str(moved)).run_id == cfg.run_id  # the source's id, not its path


def test_another_class_count_reinitializes_only_the_output_layer(tmp_path, source):
    three = "synthetic:train=256,test=128,classes=3,size=16"
    summary = train(tiny(tmp_path, data=three, init_from=source["run_dir"]), **QUIET)
    start, src = weights(summary, "init"), weights(source)
    fresh = create_model("cifar_resnet_8_8", 3, seed=0).state_dict()
    assert torch.equal(start["fc.weight"], fresh["fc.weight"]) and start["fc.weight"].shape[0] == 3
    assert all(torch.equal(start[k], src[k]) for k in start if not k.startswith("fc."))


def test_a_missing_or_unfinished_source_is_refused(tmp_path, source):
    with pytest.raises(ConfigError, match="is not a run folder"):
        _ = tiny(tmp_path, init_from=str(tmp_path / "nowhere")).run_id
    cfg = tiny(tmp_path, "unfinished", epochs=2)
    with pytest.raises(Interrupted):
        train(cfg, callbacks=[SignalAt({3})], **QUIET)
    unfinished = RunDir(tmp_path / "unfinished" / cfg.run_name)
    with pytest.raises(ConfigError, match="has not finished"):
        train(tiny(tmp_path, "t", init_from=str(unfinished.path)), **QUIET)
    with pytest.raises(ConfigError, match="do not fit this model"):
        train(tiny(tmp_path, "w", model="cifar_resnet_14_8", init_from=source["run_dir"]), **QUIET)
    assert not (tmp_path / "t").exists() and not (tmp_path / "w").exists()
