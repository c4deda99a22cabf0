"""Analysis of what BatchNorm learned: statistics, disabled features and ablation, on models
whose answer is known because γ and β are set by hand, then on real (tiny) runs; which sections
are kept or recomputed, how many passes over the test set that costs, and old files."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from bnonly.analysis import (
    EVALUATORS,
    AnalysisError,
    Column,
    OffCounter,
    WeightsAbsent,
    analysis_options,
    analyze_model,
    analyze_run,
    column_values,
    describe,
    destinations,
    evaluator,
    fraction_below,
    migrate,
    random_masks,
    read_analysis,
    stale_sections,
    zeroed_features,
)
from bnonly.cli import main
from bnonly.config import TrainConfig
from bnonly.models import create_model
from bnonly.training import train

TINY = dict(model="cifar_resnet_8_8", data="synthetic:train=128,test=64,classes=4,size=16", batch_size=32,
            epochs=2, augment="none", progress=False, device="cpu", threads=1)


class Batches:
    """A fixed list of (x, y) batches, shaped like a BatchSource for ``evaluate``."""

    def __init__(self, x, y, batch_size=50):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.num_examples = len(y)

        self.passes = 0  # evaluations that went through the test set

    def batches(self, epoch, start=0):
        self.passes += 1
        for i in range(0, len(self.y), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]


class HandSet(nn.Module):
    """BN(4 channels) -> ReLU -> spatial mean -> linear, with γ, β and the classifier set by hand.

    ch0: γ=1, β=0     informative: the label is (its pooled ReLU output > 0.25)
    ch1: γ=0.001, β=-1  output ≈ -1 everywhere: disabled, |γ| < 0.01
    ch2: γ=0, β=0.5    constant +0.5: small γ but active, feeds the classifier's bias
    ch3: γ=0.04, β=-0.5 output < 0 unless x > 12.5: disabled, 0.01 <= |γ| < 0.05
    """

    def __init__(self, affine=True):
        super().__init__()
        self.bn = nn.BatchNorm2d(4, affine=affine, eps=0.0)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            if affine:
                self.bn.weight.copy_(torch.tensor([1.0, 0.001, 0.0, 0.04]))
                self.bn.bias.copy_(torch.tensor([0.0, -1.0, 0.5, -0.5]))
            self.fc.weight.copy_(torch.tensor([[0.0, 3.0, 0.0, 3.0], [4.0, 3.0, -2.0, 3.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.relu(self.bn(x)).mean((2, 3)))


def hand_set_data(n=400, seed=0):
    x = torch.randn(n, 4, 2, 2, generator=torch.Generator().manual_seed(seed))
    model = HandSet().eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # the labels are the model's own answers: baseline accuracy 1
    return x, y


HAND_SET_INIT = {"bn.weight": torch.ones(4), "bn.bias": torch.zeros(4)}

# What the format-2 code (commit eef25e0, one flat analysis.json) wrote for
# analyze_model(HandSet(), hand_set_data(), init_state=HAND_SET_INIT, draws=3, seed=0).
FORMAT_2_HANDSET = json.loads(
    '{"ablation":{"baseline_acc":1.0,"by_destination":{"relu_fed":{"baseline_acc":1.0,"criterion":"disabled","disable'
    'd_zeroed_acc":1.0,"draws":3,"n_features":4,"n_zeroed":2,"random_zeroed_acc":[0.67,0.4,0.4],"random_zeroed_acc_me'
    'an":0.49000000000000005,"random_zeroed_acc_std":0.15588457268119896,"seed":0}},"criterion":"disabled","disabled_'
    'zeroed_acc":1.0,"draws":3,"n_features":4,"n_zeroed":2,"random_zeroed_acc":[0.67,0.4,0.4],"random_zeroed_acc_mean'
    '":0.49000000000000005,"random_zeroed_acc_std":0.15588457268119896,"seed":0},"dead_relation":{"fraction_of_alive_'
    'with_negative_beta":0.0,"fraction_of_dead_with_gamma_below":{"0.01":0.5,"0.05":1.0,"0.1":1.0},"fraction_of_dead_'
    'with_negative_beta":1.0,"fraction_of_gamma_below_that_are_dead":{"0.01":0.5,"0.05":0.6666666666666666,"0.1":0.66'
    '66666666666666}},"fraction_dead":0.5,"fraction_dead_relu_fed":0.5,"fraction_gamma_below":{"0.01":0.5,"0.05":0.75'
    ',"0.1":0.75},"layers":[{"affine":true,"beta":{"max":0.5,"mean":-0.25,"median":-0.25,"min":-1.0,"n":4,"q05":-0.92'
    '5,"q25":-0.625,"q75":0.125,"q95":0.4249999999999998,"std":0.5590169943749475},"channels":{"beta":[0.0,-1.0,0.5,-'
    '0.5],"gamma":[1.0,0.001,0.0,0.04],"init_beta":[0.0,0.0,0.0,0.0],"init_gamma":[1.0,1.0,1.0,1.0],"off_share":[0.07'
    ',1.0,0.0,1.0]},"feeds_relu":true,"fraction_dead":0.5,"fraction_gamma_below":{"0.01":0.5,"0.05":0.75,"0.1":0.75},'
    '"gamma":{"max":1.0,"mean":0.26024999978835694,"median":0.02049999957671389,"min":0.0,"n":4,"q05":0.0001500000071'
    '2461772,"q25":0.0007500000356230885,"q75":0.27999999932944775,"q95":0.8559999998658893,"std":0.42739933036014754'
    '},"init_gamma":{"max":1.0,"mean":1.0,"median":1.0,"min":1.0,"n":4,"q05":1.0,"q25":1.0,"q75":1.0,"q95":1.0,"std":'
    '0.0},"n_dead":2,"name":"bn","num_features":4,"type":"BatchNorm2d"}],"n_dead":2,"n_dead_relu_fed":2,"n_features":'
    '4,"n_layers":1,"n_relu_fed_features":4,"options":{"dead_share":0.99,"draws":3,"seed":0,"thresholds":[0.01,0.05,0'
    '.1]},"overall":{"abs_gamma":{"max":1.0,"mean":0.26024999978835694,"median":0.02049999957671389,"min":0.0,"n":4,"'
    'q05":0.00015000000712461772,"q25":0.0007500000356230885,"q75":0.27999999932944775,"q95":0.8559999998658893,"std"'
    ':0.42739933036014754},"beta":{"max":0.5,"mean":-0.25,"median":-0.25,"min":-1.0,"n":4,"q05":-0.925,"q25":-0.625,"'
    'q75":0.125,"q95":0.4249999999999998,"std":0.5590169943749475},"gamma":{"max":1.0,"mean":0.26024999978835694,"med'
    'ian":0.02049999957671389,"min":0.0,"n":4,"q05":0.00015000000712461772,"q25":0.0007500000356230885,"q75":0.279999'
    '99932944775,"q95":0.8559999998658893,"std":0.42739933036014754},"init_beta":{"max":0.0,"mean":0.0,"median":0.0,"'
    'min":0.0,"n":4,"q05":0.0,"q25":0.0,"q75":0.0,"q95":0.0,"std":0.0},"init_gamma":{"max":1.0,"mean":1.0,"median":1.'
    '0,"min":1.0,"n":4,"q05":1.0,"q25":1.0,"q75":1.0,"q95":1.0,"std":0.0}},"test":{"n_examples":400,"test_acc":1.0,"t'
    'est_loss":0.3727537059783936,"test_top5":1.0},"version":2}')


def test_describe_and_fraction_below_known_values():
    s = describe(torch.arange(101.0))
    assert (s["n"], s["mean"], s["median"], s["min"], s["max"]) == (101, 50.0, 50.0, 0.0, 100.0)
    assert (s["q05"], s["q25"], s["q75"], s["q95"]) == (5.0, 25.0, 75.0, 95.0)
    assert s["std"] == pytest.approx(math.sqrt((101 ** 2 - 1) / 12))  # population std of 0..100
    g = torch.tensor([0.0, 0.005, -0.03, 0.07, 0.5, -0.2, 0.01, 1.0])
    assert fraction_below(g, (0.01, 0.05, 0.1)) == {"0.01": 2 / 8, "0.05": 4 / 8, "0.1": 5 / 8}  # strict <
    assert describe(torch.zeros(0))["mean"] is None


def test_hand_set_model_statistics_disabled_features_and_ablation():
    x, y = hand_set_data()
    model = HandSet().eval()
    sections = analyze_model(model, Batches(x, y), init_state=HAND_SET_INIT, draws=6, seed=0)
    af, dis, ab = sections["affine"], sections["disabled"], sections["ablation"]

    assert af["n_features"] == dis["n_features"] == 4 and af["n_layers"] == 1
    assert af["fraction_gamma_below"] == {"0.01": 0.5, "0.05": 0.75, "0.1": 0.75}
    layer, dlayer = af["layers"][0], dis["layers"][0]
    expected_off0 = (x[:, 0] <= 0).flatten(1).all(1).double().mean().item()
    assert dlayer["channels"]["off_share"] == pytest.approx([expected_off0, 1.0, 0.0, 1.0], abs=1e-6)
    assert 0 < expected_off0 < 0.2  # ch0 is all-negative on some inputs, far from 99%
    assert dis["n_dead"] == 2 and dis["fraction_dead"] == 0.5 and dlayer["n_dead"] == 2
    assert dlayer["dead_channels"] == [1, 3]
    rel = dis["dead_relation"]
    assert rel["fraction_of_dead_with_gamma_below"] == {"0.01": 0.5, "0.05": 1.0, "0.1": 1.0}
    assert rel["fraction_of_gamma_below_that_are_dead"] == {"0.01": 0.5, "0.05": pytest.approx(2 / 3),
                                                          "0.1": pytest.approx(2 / 3)}
    assert rel["fraction_of_dead_with_negative_beta"] == 1.0
    assert rel["fraction_of_alive_with_negative_beta"] == 0.0
    assert af["overall"]["init_gamma"]["mean"] == 1.0 and af["overall"]["beta"]["min"] == -1.0
    assert layer["gamma"]["max"] == 1.0 and layer["channels"]["gamma"] == pytest.approx([1.0, 0.001, 0.0, 0.04])

    assert dis["test"]["test_acc"] == 1.0 and ab["baseline_acc"] == 1.0
    assert ab["n_zeroed"] == 2 and ab["n_features"] == 4 and len(ab["random_zeroed_acc"]) == 6
    assert ab["disabled_zeroed_acc"] == 1.0  # the disabled features carried nothing
    assert ab["random_zeroed_acc_mean"] < 0.9  # zeroing ch0 or ch2 costs accuracy
    assert ab["random_zeroed_acc_mean"] == pytest.approx(np.mean(ab["random_zeroed_acc"]))
    assert ab["random_zeroed_acc_std"] == pytest.approx(np.std(ab["random_zeroed_acc"], ddof=1))
    # The only BN feeds a ReLU: the ReLU-fed ablation is the overall one, and nothing is 'other'.
    assert (dlayer["destination"], dlayer["activation"], dlayer["not_applicable"]) == ("relu_fed", "relu", None)
    assert list(dis["criteria"]) == ["relu"] and dis["norms"] == "BNs" and dis["n_measured"] == 4
    assert (dis["n_relu_fed_features"], dis["n_dead_relu_fed"], dis["fraction_dead_relu_fed"]) == (4, 2, 0.5)
    runner_keys = {"by_destination", "not_applicable", "norms", "version", "options", "seconds"}
    assert ab["by_destination"] == {"relu_fed": {k: v for k, v in ab.items() if k not in runner_keys}}
    assert {name: (s["version"], s["options"]) for name, s in sections.items()} == {
        "affine": (2, {"thresholds": [0.01, 0.05, 0.1]}),
        "disabled": (2, {"thresholds": [0.01, 0.05, 0.1], "dead_share": 0.99}),
        "ablation": (2, {"draws": 6, "seed": 0}), "supermask": (1, {})}
    assert sections["supermask"]["not_applicable"] == "the run's what-trains spec is not known"
    again = analyze_model(model, Batches(x, y), draws=6, seed=0)["ablation"]
    assert again["random_zeroed_acc"] == ab["random_zeroed_acc"]  # seeded draws
    assert json.loads(json.dumps(sections)) == sections  # analysis.json-ready


def test_dead_share_threshold_is_configurable():
    x, y = hand_set_data()
    dis = analyze_model(HandSet().eval(), Batches(x, y), dead_share=0.01, draws=2)["disabled"]
    assert dis["n_dead"] == 3  # ch0 (all-negative on a few inputs) now counts too
    assert dis["options"]["dead_share"] == 0.01
    with pytest.raises(AnalysisError, match="dead_share"):
        analyze_model(HandSet().eval(), Batches(x, y), dead_share=0)


def test_bn_without_affine_counts_as_gamma_one_and_nothing_disabled_zeroes_nothing():
    x, _ = hand_set_data()
    model = HandSet(affine=False).eval()
    y = model(x).argmax(1)
    batches = Batches(x, y)
    sections = analyze_model(model, batches, draws=3)
    af = sections["affine"]
    assert af["fraction_gamma_below"] == {"0.01": 0.0, "0.05": 0.0, "0.1": 0.0}
    assert af["overall"]["gamma"]["min"] == 1.0 and af["overall"]["beta"]["max"] == 0.0
    assert sections["disabled"]["n_dead"] == 0
    ab = sections["ablation"]
    assert ab["n_zeroed"] == 0 and ab["disabled_zeroed_acc"] == ab["baseline_acc"] == ab["random_zeroed_acc_mean"]
    assert batches.passes == 1  # zeroing nothing needs no pass of its own


def test_model_without_normalization_layers_is_not_applicable_but_keeps_its_accuracy():
    """A no-norm model (cifar_resnet_*_nonorm) has no γ, β or disabled features: null with a reason,
    not an error, so a folder of runs that holds one is analysed and reported whole."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.randn(8, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    batches = Batches(x, y)
    sections = analyze_model(model, batches, draws=2)
    af, dis, ab = sections["affine"], sections["disabled"], sections["ablation"]
    reason = "the model has no normalization layers"
    assert af["not_applicable"] == dis["not_applicable"] == ab["not_applicable"] == reason
    assert (af["n_layers"], af["n_features"], af["fraction_gamma_below"]["0.05"]) == (0, 0, None)
    assert (dis["fraction_dead"], dis["n_dead"], dis["n_measured"]) == (None, None, 0)
    assert dis["test"]["test_acc"] == ab["baseline_acc"] == 1.0 and ab["disabled_zeroed_acc"] is None
    assert batches.passes == 1
    assert column_values({"sections": sections})["disabled_not_applicable"] == reason


def test_batchnorm1d_features():
    model = nn.Sequential(nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.0, -5.0, 5.0]))
        model[0].weight.fill_(1.0)
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(1))
    with OffCounter([("0", model[0])]) as counter:
        model(x)
    share = counter.shares()["0"]
    assert share[0] == pytest.approx((x[:, 0] <= 0).double().mean().item())
    assert share[1] == 1.0 and share[2] == 0.0


def test_zeroed_features_zero_exactly_the_masked_channels_and_clean_up():
    model = create_model("cifar_resnet_8_8", 4).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    seen = {}  # what the first block receives: ReLU(stem BN output)
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("out", args[0]))
    mask = torch.zeros(8, dtype=torch.bool)
    mask[[1, 5]] = True
    with torch.no_grad():
        plain = model(x)
        before = seen["out"].clone()
        with zeroed_features(model, {"bn": mask}):
            model(x)
            zeroed = seen["out"].clone()
        assert torch.equal(model(x), plain)  # the hook is gone
    assert torch.all(zeroed[:, mask] == 0)
    assert torch.equal(zeroed[:, ~mask], before[:, ~mask])


def test_random_masks_draw_exactly_n_features_reproducibly():
    sizes = {"a": 8, "b": 16, "c": 4}
    m1 = random_masks(sizes, 10, np.random.default_rng(3))
    m2 = random_masks(sizes, 10, np.random.default_rng(3))
    assert sum(int(m.sum()) for m in m1.values()) == 10
    assert {k: m.numel() for k, m in m1.items()} == sizes
    assert all(torch.equal(m1[k], m2[k]) for k in sizes)


def test_stem_feature_disabled_by_hand_in_a_real_resnet_is_found_and_free_to_zero():
    """The stem BN feeds a ReLU directly: a channel with γ=0, β=-1 is off for every input, and
    zeroing it leaves every logit unchanged."""
    model = create_model("cifar_resnet_8_8", 4).eval()
    with torch.no_grad():
        model.bn.weight[3], model.bn.bias[3] = 0.0, -1.0
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    dis = analyze_model(model, Batches(x, y, 32), draws=2)["disabled"]
    stem = next(layer for layer in dis["layers"] if layer["name"] == "bn")
    assert stem["channels"]["off_share"][3] == 1.0 and 3 in stem["dead_channels"]
    with torch.no_grad(), zeroed_features(model, {"bn": torch.arange(8) == 3}):
        assert torch.equal(model(x).argmax(1), y)
    assert dis["test"]["test_acc"] == 1.0


def relu_fed_batchnorms(model):
    return {name for name, d in destinations(model)[0].items() if d.kind == "relu_fed"}


def test_relu_fed_batchnorms_follow_the_data_flow_not_the_names():
    resnet = relu_fed_batchnorms(create_model("cifar_resnet_8_8", 4))
    assert resnet == {"bn", "blocks.0.bn1", "blocks.1.bn1", "blocks.2.bn1"}  # bn2 and shortcuts feed the sum
    assert relu_fed_batchnorms(create_model("cifar_vgg_11", 10)) == {
        n for n, m in create_model("cifar_vgg_11", 10).named_modules() if isinstance(m, nn.BatchNorm2d)}

    class FunctionalRelu(nn.Module):  # F.relu and Tensor.relu_ count; a BN also used elsewhere does not
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.BatchNorm2d(2), nn.BatchNorm2d(2), nn.BatchNorm2d(2)

        def forward(self, x):
            a = torch.nn.functional.relu(self.a(x))
            b = self.b(a).relu_()
            c = self.c(b)
            return torch.relu(c) + c

    assert relu_fed_batchnorms(FunctionalRelu()) == {"a", "b"}
    c = destinations(FunctionalRelu())[0]["c"]  # used by a ReLU and by the sum: neither decides alone
    assert c.not_applicable == "feeds the model's output, not a ReLU-like activation"


def split_model():
    """A ResNet with a disabled stem channel (feeds a ReLU) and a disabled channel of the last
    block's second BN (feeds the residual sum): zeroing the latter removes its -50 from the sum, the
    shortcut's channel passes the ReLU, and the classifier (weight 1000 on it) then answers class 0."""
    model = create_model("cifar_resnet_8_8", 4).eval()
    with torch.no_grad():
        model.bn.weight[3], model.bn.bias[3] = 0.0, -1.0
        model.blocks[2].bn2.weight[5], model.blocks[2].bn2.bias[5] = 0.0, -50.0
        model.blocks[2].shortcut[1].weight[5] = 1.0
        model.fc.weight[:, 5] = torch.tensor([1000.0, 0.0, 0.0, 0.0])
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_ablation_split_separates_relu_fed_from_residual_side_features():
    """A disabled feature of a ReLU-fed BN is free to zero; one of a BN that feeds the sum is not."""
    model, x, y = split_model()
    sections = analyze_model(model, Batches(x, y, 32), draws=3)
    af, dis, ab = sections["affine"], sections["disabled"], sections["ablation"]
    dead = {layer["name"]: layer["dead_channels"] for layer in dis["layers"]}
    assert dead == {layer["name"]: [i for i, s in enumerate(layer["channels"]["off_share"]) if s >= 0.99]
                    for layer in dis["layers"]}
    assert dead["bn"] == [3] and dead["blocks.2.bn2"] == [5]
    assert {layer["name"]: layer["destination"] for layer in dis["layers"]}["blocks.2.bn2"] == "other"
    assert (y != 0).float().mean() > 0.9
    relu_fed_features = 8 + 8 + 16 + 32  # stem + each stage's first BN
    n_dead_relu_fed = sum(len(dead[n]) for n in ("bn", "blocks.0.bn1", "blocks.1.bn1", "blocks.2.bn1"))
    assert dis["n_relu_fed_features"] == relu_fed_features
    assert dis["fraction_dead_relu_fed"] == n_dead_relu_fed / relu_fed_features
    split = ab["by_destination"]
    assert split["relu_fed"]["n_zeroed"] + split["other"]["n_zeroed"] == ab["n_zeroed"] == dis["n_dead"]
    assert split["relu_fed"]["n_features"] == relu_fed_features
    assert split["other"]["n_features"] == af["n_features"] - relu_fed_features
    assert split["relu_fed"]["disabled_zeroed_acc"] == 1.0  # the ReLU output was zero already
    assert split["other"]["disabled_zeroed_acc"] < 0.5  # class 0 wherever the shortcut channel is positive
    assert ab["disabled_zeroed_acc"] == split["other"]["disabled_zeroed_acc"]
    assert len(split["other"]["random_zeroed_acc"]) == 3


def test_sections_are_kept_while_fresh_and_passes_over_the_test_set_are_shared():
    """One pass serves the baseline accuracy and the off counts; each ablation (overall, ReLU-fed,
    other) costs 1 + draws. A section is recomputed only when its options or a section it needs are."""
    model, x, y = split_model()

    def analyze(kept=None, **options):
        batches = Batches(x, y, 32)
        return analyze_model(model, batches, kept=kept, **options), batches.passes

    first, passes = analyze(draws=2)
    assert passes == 1 + 3 * (1 + 2)
    foreign = {"version": 4, "options": {}, "value": 1}  # a section of an evaluator not registered now
    again, passes = analyze(first | {"elsewhere": foreign}, draws=2)
    assert passes == 0 and again == first | {"elsewhere": foreign}
    assert all(again[name] is first[name] for name in first)
    more_draws, passes = analyze(first, draws=3)
    assert passes == 3 * (1 + 3)  # the kept disabled section supplies the masks and the baseline
    assert more_draws["affine"] is first["affine"] and more_draws["disabled"] is first["disabled"]
    assert more_draws["ablation"]["random_zeroed_acc"][:2] == first["ablation"]["random_zeroed_acc"]
    other_thresholds, passes = analyze(first, thresholds=(0.5,), draws=2)
    assert passes == 1 + 3 * (1 + 2)  # 'disabled' reads the thresholds; the ablation needs it
    assert other_thresholds["affine"]["options"] == {"thresholds": [0.5]}
    assert other_thresholds["ablation"] == {**first["ablation"], "seconds": other_thresholds["ablation"]["seconds"]}
    assert stale_sections(first, analysis_options(dead_share=0.5, draws=2)) == ["disabled", "ablation", "supermask"]
    assert stale_sections({**first, "affine": {**first["affine"], "version": 0}}, analysis_options(draws=2)) == [
        "affine"]


def test_format_2_analysis_migrates_to_the_numbers_computed_today():
    """A format-2 file reads as version-1 sections holding the numbers today's evaluators compute
    (so the report is the same), and every section is redone by the next ``bnonly analyze``."""
    x, y = hand_set_data()
    today = analyze_model(HandSet().eval(), Batches(x, y), init_state=HAND_SET_INIT, draws=3, seed=0)
    migrated = migrate(FORMAT_2_HANDSET)
    # format 2 predates the supermask section: the next analyze adds it
    assert migrated["format"] == 3 and set(migrated["sections"]) == set(today) - {"supermask"}
    assert {s["version"] for s in migrated["sections"].values()} == {1}
    assert column_values(migrated) == {k: v for k, v in column_values({"sections": today}).items()
                                       if not k.startswith("supermask")}
    assert migrated["sections"]["affine"]["layers"][0]["channels"] == today["affine"]["layers"][0]["channels"]
    assert stale_sections(migrated["sections"], analysis_options(draws=3)) == ["affine", "disabled", "ablation",
                                                                               "supermask"]
    assert migrate(migrated) is migrated and migrate(None) is None


def test_format_1_analysis_still_reads():
    """Format 1 had no ReLU-fed split: readable (the split is None), and redone like format 2."""
    old = {k: v for k, v in FORMAT_2_HANDSET.items()
           if k not in ("n_relu_fed_features", "n_dead_relu_fed", "fraction_dead_relu_fed")}
    old["version"] = 1
    old["layers"] = [{k: v for k, v in layer.items() if k != "feeds_relu"} for layer in old["layers"]]
    old["ablation"] = {k: v for k, v in old["ablation"].items() if k != "by_destination"}
    sections = migrate(old)["sections"]
    assert sections["disabled"]["version"] == sections["ablation"]["version"] == 0
    assert sections["disabled"]["fraction_dead_relu_fed"] is None and sections["disabled"]["fraction_dead"] == 0.5
    assert stale_sections(sections, analysis_options(draws=3)) == ["affine", "disabled", "ablation", "supermask"]


def test_a_model_fx_cannot_trace_has_no_disabled_features_to_measure():
    """Without a trace, which activation a layer feeds is unknown: not applicable, not a guess."""
    class DataDependent(HandSet):
        def forward(self, x):
            out = self.relu(self.bn(x))
            return self.fc(out.mean((2, 3)) if out.sum() > 0 else out.amax((2, 3)))

    x, y = hand_set_data()
    sections = analyze_model(DataDependent().eval(), Batches(x, y), draws=2)
    dis, ab = sections["disabled"], sections["ablation"]
    assert dis["traced"] is False and dis["fraction_dead"] is None and dis["fraction_dead_relu_fed"] is None
    assert dis["not_applicable"].startswith("fx could not trace the model (TraceError")
    assert dis["layers"][0]["destination"] is None and dis["layers"][0]["n_dead"] is None
    assert ab["not_applicable"] == dis["not_applicable"] and ab["by_destination"] is None
    assert sections["affine"]["fraction_gamma_below"]["0.01"] == 0.5  # γ/β statistics need no trace


def test_declarations_are_checked():
    with pytest.raises(AnalysisError, match="table must be one of"):
        Column("x", lambda s: 0, "x", table="elsewhere")
    with pytest.raises(AnalysisError, match="unit"):
        Column("n", lambda s: 0, "n", unit="count")  # a count shows no spread over seeds
    with pytest.raises(AnalysisError, match="evaluator 'bad': unknown options \\['dead_shares'\\]"):
        evaluator("bad", version=1, options=("dead_shares",))(lambda ctx, options: {})
    with pytest.raises(AnalysisError, match="spread \\['x_std'\\] names no column"):
        evaluator("bad", version=1, columns=[Column("x", lambda s: 0, "x", spread="x_std")])(lambda ctx, options: {})
    assert "bad" not in EVALUATORS
    evaluator("needs_later", version=1, needs=("nowhere",))(lambda ctx, options: {})
    try:
        with pytest.raises(AnalysisError, match="needs \\['nowhere'\\]"):
            stale_sections({}, analysis_options())
    finally:
        EVALUATORS.unregister("needs_later")


def tiny_run(tmp_path, **kw):
    return train(TrainConfig(**{**TINY, "out": str(tmp_path / "runs"), **kw}), log=lambda *_: None)


def test_analyze_a_finished_run_writes_json_and_figures(tmp_path):
    summary = tiny_run(tmp_path, train="bn")
    run_dir = tmp_path / "runs" / summary["run_dir"].split("/")[-1]
    a = analyze_run(run_dir, draws=2)
    stored = json.loads((run_dir / "analysis.json").read_text())
    assert stored == json.loads(json.dumps(a)) == read_analysis(run_dir)
    assert stored["format"] == 3 and stored["run"] == run_dir.name and stored["train"] == "bn"
    af, dis, ab = (stored["sections"][k] for k in ("affine", "disabled", "ablation"))
    assert set(ab) >= {"baseline_acc", "disabled_zeroed_acc", "random_zeroed_acc_mean", "random_zeroed_acc_std",
                       "n_zeroed"}
    # Same evaluation as training's: the baseline is the run's own test accuracy.
    assert ab["baseline_acc"] == dis["test"]["test_acc"] == summary["test_acc"] == stored["summary_test_acc"]
    assert af["n_features"] == summary["bn_params"] // 2
    init = torch.load(run_dir / "init.pt")
    assert af["overall"]["init_gamma"]["mean"] == pytest.approx(
        torch.cat([init[f"{layer['name']}.weight"] for layer in af["layers"]]).double().mean().item())
    pngs = sorted(p.name for p in run_dir.glob("analysis_*.png"))
    assert pngs == ["analysis_ablation.png", "analysis_gamma_beta.png", "analysis_gamma_vs_beta.png",
                    "analysis_layers.png"]
    assert all((run_dir / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    mtime = (run_dir / "analysis.json").stat().st_mtime_ns
    assert analyze_run(run_dir, draws=2) == stored  # same options: reused, not rewritten
    assert (run_dir / "analysis.json").stat().st_mtime_ns == mtime
    redone = analyze_run(run_dir, draws=3, figures=False)["sections"]
    assert redone["affine"] == af and redone["disabled"] == dis and redone["ablation"]["draws"] == 3


def test_a_run_on_a_class_subset_is_analysed_on_that_subset(tmp_path):
    # Found by results/transfer: analysis reopened the data without --classes, built a 4-way head
    # for a 2-class run and failed in load_state_dict.
    summary = tiny_run(tmp_path, train="bn", epochs=1, classes="class2,class0")
    run_dir = tmp_path / "runs" / summary["run_dir"].split("/")[-1]
    a = analyze_run(run_dir, draws=2, figures=False)
    assert a["num_classes"] == 2
    assert a["sections"]["ablation"]["baseline_acc"] == summary["test_acc"] == a["summary_test_acc"]


def test_a_run_whose_data_is_not_found_from_here_names_the_run_and_the_fix(tmp_path):
    summary = tiny_run(tmp_path, train="bn", epochs=1)
    run_dir = tmp_path / "runs" / summary["run_dir"].split("/")[-1]
    cfg = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps(cfg | {"data": "../elsewhere/cifar10"}))  # relative, moved
    with pytest.raises(AnalysisError, match=r"trained on data '../elsewhere/cifar10', which cannot be opened from "
                                            r".*: run from the folder it was trained from, or give --data PATH"):
        analyze_run(run_dir, draws=2, figures=False)
    a = analyze_run(run_dir, draws=2, figures=False, data=cfg["data"])
    assert a["summary_test_acc"] == summary["test_acc"]


def test_analyze_redoes_a_format_2_file_and_reuses_a_fresh_one_without_loading_the_run(tmp_path):
    summary = tiny_run(tmp_path, train="bn", epochs=1)
    run_dir = tmp_path / "runs" / summary["run_dir"].split("/")[-1]
    (run_dir / "analysis.json").write_text(json.dumps(FORMAT_2_HANDSET))
    a = analyze_run(run_dir, draws=3, figures=False)
    assert {name: s["version"] for name, s in a["sections"].items()} == {e.name: e.obj.version
                                                                         for e in EVALUATORS.entries()}
    assert a["sections"]["affine"]["n_features"] == summary["bn_params"] // 2
    assert a == json.loads((run_dir / "analysis.json").read_text())
    (run_dir / "final.pt").unlink()  # loading the run would fail
    assert analyze_run(run_dir, draws=3, figures=False) == a


def test_analyze_cli_on_a_folder_of_runs_including_a_no_affine_run(tmp_path, capsys):
    tiny_run(tmp_path, train="all", bn_affine=False)
    tiny_run(tmp_path, train="output", epochs=1)
    assert main(["analyze", str(tmp_path / "runs"), "--draws", "2", "--thresholds", "0.05", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert out.count("analysis.json") == 2 and out.count("disabled (off for >= 99% of 64 test inputs)") == 2
    assert out.count("|γ| <0.05: ") == 2 and out.count("ablation: zero the ") == 2
    results = {json.loads(p.read_text())["train"]: json.loads(p.read_text())["sections"]
               for p in (tmp_path / "runs").glob("*/analysis.json")}
    assert results["all"]["affine"]["fraction_gamma_below"] == {"0.05": 0.0}  # γ fixed at 1
    assert results["all"]["affine"]["overall"]["gamma"]["min"] == 1.0
    # 'output' trains no BN: γ is still its initial U[0, 1] draw.
    layers = results["output"]["affine"]["layers"]
    assert all(layer["channels"]["gamma"] == layer["channels"]["init_gamma"] for layer in layers)
    assert not list((tmp_path / "runs").glob("*/analysis_*.png"))


def test_a_run_kept_as_its_small_files_keeps_its_analysis_and_says_what_is_out_of_date(tmp_path, capsys):
    """results/ folders hold runs without their weights: analysing them keeps each analysis.json as it
    is (naming the sections it cannot redo) instead of failing inside torch.load."""
    summary = tiny_run(tmp_path, train="bn", epochs=1)
    run_dir = tmp_path / "runs" / summary["run_dir"].split("/")[-1]
    fresh = analyze_run(run_dir, draws=2, figures=False)
    outdated = {**fresh, "sections": {k: v for k, v in fresh["sections"].items() if k != "supermask"}}
    (run_dir / "analysis.json").write_text(json.dumps(outdated))
    (run_dir / "final.pt").unlink()
    assert main(["analyze", str(tmp_path / "runs"), "--draws", "2", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "kept its analysis.json as it is; section(s) supermask are out of date or missing" in out
    assert json.loads((run_dir / "analysis.json").read_text()) == outdated
    with pytest.warns(WeightsAbsent, match="supermask"):
        assert analyze_run(run_dir, draws=2, figures=False) == outdated
    (run_dir / "analysis.json").unlink()
    assert main(["analyze", str(run_dir), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "has no final.pt (its trained weights) and no analysis.json" in err and "Traceback" not in err


def test_analyze_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path), "--thresholds", "a,b"]) == 2
    assert "--thresholds" in capsys.readouterr().err
