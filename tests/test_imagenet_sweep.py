"""sweeps/imagenet_paper.yaml expands into the paper's ImageNet grid, on the imagenet preset, and every
run's what-trains spec resolves on its model (built on the meta device: no weights are allocated)."""

from pathlib import Path

import bnonly
from bnonly.cli import main
from bnonly.sweep import expand, load_spec

SPEC = Path(__file__).resolve().parents[1] / "sweeps" / "imagenet_paper.yaml"
MODELS = [f"imagenet_resnet_{d}" for d in (18, 34, 50, 101, 152, 200)] + ["imagenet_resnet_50_128"]
CONFIGS = ["bn", "all", "bn+output", "output", "random-per-channel:2", "random:matched"]
# BN γ+β, output layer and all parameters (docs/models.md's model table, torchvision's counts for the rest).
BN = {"imagenet_resnet_18": 9_600, "imagenet_resnet_50": 53_120, "imagenet_resnet_200": 176_000,
      "imagenet_resnet_50_128": 68_224}
TOTAL = {"imagenet_resnet_18": 11_689_512, "imagenet_resnet_34": 21_797_672, "imagenet_resnet_50": 25_557_032,
         "imagenet_resnet_101": 44_549_160, "imagenet_resnet_152": 60_192_808, "imagenet_resnet_200": 64_673_832,
         "imagenet_resnet_50_128": 68_883_240}
RANDOM_ON = ("imagenet_resnet_18", "imagenet_resnet_50")


def test_imagenet_sweep_is_the_paper_grid_on_the_imagenet_preset(tmp_path):
    counts = {}

    def check(cfg):
        """Each (model, spec) once: the model builds and the spec selects what it should. The random
        specs draw one number per weight (seconds for ResNet-200), so they are resolved on two models."""
        if (cfg.model, cfg.train) in counts or (cfg.train.startswith("random") and cfg.model not in RANDOM_ON):
            return
        model = bnonly.create_model(cfg.model, 1000, device="meta")
        counts[cfg.model, cfg.train] = bnonly.select(model, cfg.train, seed=0).num_trainable(model)
        counts[cfg.model, "total"] = sum(p.numel() for p in model.parameters())

    cfgs = expand(load_spec(SPEC), out=str(tmp_path), check=check)
    assert len(cfgs) == len({c.run_name for c in cfgs}) == 7 * 6 * 3 == 126
    assert {(c.model, c.train, c.seed) for c in cfgs} == {(m, t, s) for m in MODELS for t in CONFIGS for s in (0, 1, 2)}
    # Priority order: seed 0 first (BN-only, then full training, then the baselines), seeds 1 and 2 after.
    assert [(c.model, c.train) for c in cfgs[:7]] == [(m, "bn") for m in MODELS]
    assert [(c.model, c.train) for c in cfgs[7:14]] == [(m, "all") for m in MODELS]
    assert {c.seed for c in cfgs[:42]} == {0} and {c.seed for c in cfgs[42:]} == {1, 2}
    # The imagenet preset's recipe, the same for every run.
    recipe = {(c.epochs, c.schedule_epochs, c.batch_size, c.lr, c.warmup_epochs, tuple(c.milestones), c.augment,
               c.image_size, c.weight_decay, c.momentum, c.data, c.num_workers, c.gamma_init) for c in cfgs}
    assert recipe == {(90.0, 90.0, 1024, 0.4, 5.0, (30, 60, 80), "imagenet", 224, 1e-4, 0.9,
                       "../shared/data/imagenet", 8, "uniform")}
    # The specs select what the study compares: BN's count, matched by random:matched.
    for m in MODELS:
        assert counts[m, "total"] == counts[m, "all"] == TOTAL[m]
        assert counts[m, "bn"] == BN.get(m, counts[m, "bn"]) and counts[m, "bn"] > 0
        assert counts[m, "bn+output"] == counts[m, "bn"] + counts[m, "output"]
        assert counts[m, "output"] == (512 if m in ("imagenet_resnet_18", "imagenet_resnet_34") else 2048) * 1000 + 1000
    for m in RANDOM_ON:
        assert counts[m, "random:matched"] == counts[m, "bn"] == BN[m]
        # 2 per output channel of every conv (each one feeds one BN: BN's count) and of the 1000 output rows.
        assert counts[m, "random-per-channel:2"] == counts[m, "bn"] + 2 * 1000


def test_imagenet_sweep_status_needs_no_data(tmp_path, capsys):
    assert main(["sweep", str(SPEC), "--out", str(tmp_path), "--status"]) == 0
    shown = capsys.readouterr().out
    assert "126 runs" in shown and "done 0  running 0  failed 0  pending 126" in shown
