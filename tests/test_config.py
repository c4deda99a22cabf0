"""Config: presets, precedence, clear errors, and run identity hashes pinned literally."""

import pytest

from bnonly.config import PRESETS, ConfigError, TrainConfig, from_dict, resolve
from bnonly.training import lr_at


def test_defaults_are_the_papers_cifar10_recipe():
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == (160, 128, 0.1, 0.9, 1e-4)
    assert c.milestones == (80, 120) and c.lr_gamma == 0.1 and c.gamma_init == "uniform"


def test_imagenet_preset():
    c = resolve("imagenet")
    assert (c.batch_size, c.lr, c.warmup_epochs, c.milestones, c.epochs) == (1024, 0.4, 5, (30, 60, 80), 90)


def test_precedence_defaults_preset_file_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.2\nbatch_size: 64\nmilestones: [10, 20]\n")
    c = resolve("imagenet", f, batch_size="32")
    assert c.lr == 0.2 and c.batch_size == 32 and c.milestones == (10, 20) and c.warmup_epochs == 5


def test_unknown_field_preset_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="unknown config field.*learning_rate.*valid fields"):
        from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="unknown preset 'cifar11'.*cifar10"):
        resolve("cifar11")
    with pytest.raises(ConfigError, match="^epochs='ten' is not a number$"):
        from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="^bn_affine='maybe' is not true or false$"):
        from_dict({"bn_affine": "maybe"})


def test_run_id_pinned_and_stable():
    # Literal hashes: changing them silently orphans every existing run folder.
    assert TrainConfig().run_id == "44136fa355b3"
    assert TrainConfig(model="cifar_resnet_14", train="bn", epochs=1.0, data="synthetic").run_id == "687e5aba95d2"


def test_run_id_ignores_where_and_how_fast():
    base = TrainConfig(data="synthetic")
    assert base.replace(device="cpu", out="/elsewhere", threads=1, progress=False).run_id == base.run_id
    assert base.replace(seed=1).run_id != base.run_id
    assert base.replace(train="all").run_id != base.run_id
    assert base.replace(epochs="160").run_id == base.run_id  # a default given explicitly changes nothing


def test_run_name_is_readable_and_safe():
    c = TrainConfig(model="cifar_resnet_14", train="bn+random:matched", seed=2)
    assert c.run_name.startswith("cifar_resnet_14.bn-random-matched.s2.") and "/" not in c.run_name


def test_schedule_keeps_its_shape_when_shortened():
    full = TrainConfig()
    short = full.replace(epochs=16)
    for frac in (0.0, 0.49, 0.5, 0.74, 0.75, 0.99):
        assert lr_at(short, frac * 16) == pytest.approx(lr_at(full, frac * 160))
    assert lr_at(short, 7.9) == pytest.approx(0.1) and lr_at(short, 8) == pytest.approx(0.01)
    assert lr_at(short, 12) == pytest.approx(0.001)


def test_warmup_is_linear():
    c = resolve("imagenet")
    assert lr_at(c, 0) == 0 and lr_at(c, 2.5) == pytest.approx(0.2) and lr_at(c, 5) == pytest.approx(0.4)
    assert lr_at(c, 30) == pytest.approx(0.04) and lr_at(c, 85) == pytest.approx(0.0004)


def test_presets_only_name_real_fields():
    for values in PRESETS.values():
        from_dict(values)


def test_python_and_cli_configs_name_the_same_run():
    from bnonly.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--epochs", "10", "--milestones", "5,8", "--data", "synthetic"])
    assert TrainConfig(epochs=10, milestones=[5, 8], data="synthetic").run_id == config_from_args(args).run_id
    assert isinstance(TrainConfig(epochs=10).epochs, float)
