"""The analyses on every normalizer, not only BatchNorm: γ/β of GroupNorm, LayerNorm, InstanceNorm
and RMSNorm layers; disabled features where a norm feeds a ReLU or a GELU (each with its own
criterion), "not applicable" where it feeds neither (a ViT's pre-norm LayerNorm); and the
BatchNorm statistics a run evaluated with, which the analysis's baseline must reproduce.
Models are built here from torch layers, with γ and β set by hand where the answer must be known."""

import torch
import torch.nn.functional as F
from test_analysis import TINY, Batches
from torch import nn

from bnonly.analysis import ACTIVATIONS, OffCounter, analyze_model, analyze_run, destinations, normalizer_name
from bnonly.config import TrainConfig
from bnonly.training import train


def set_affine(layer, gamma, beta=None):
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(gamma))
        if beta is not None:
            layer.bias.copy_(torch.tensor(beta))


class GroupThenLayerNorm(nn.Module):
    """GroupNorm(2 groups, 4 channels) -> ReLU on an image, then its 4 pixels as tokens ->
    LayerNorm(4 features) -> GELU -> mean over tokens -> linear.

    The class is whether LayerNorm unit 0's mean GELU output exceeds unit 2's.
    GroupNorm ch1: γ=0.001, β=-1: output ≈ -1 everywhere, disabled for the ReLU.
    LayerNorm unit 1: γ=0.01, β=-5: output ≈ -5 <= -3 on every token, disabled for the GELU.
    LayerNorm unit 3: γ=0.5, β=-2.5: output in [-3.37, -1.63] (|x̂| <= √3 over 4 values), so <= 0
    everywhere, which would be "disabled" for a ReLU, but GELU(-1.63) = -0.084 is not ≈ 0: off only
    for an image all of whose tokens have x̂ <= -1, so not disabled.
    """

    def __init__(self):
        super().__init__()
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)
        set_affine(self.gn, [1.0, 0.001, 1.0, 1.0], [0.0, -1.0, 0.0, 0.0])
        set_affine(self.ln, [1.0, 0.01, 1.0, 0.5], [0.0, -5.0, 0.0, -2.5])
        set_affine(self.fc, [[3.0, 0.0, -3.0, 0.0], [-3.0, 0.0, 3.0, 0.0]], [0.0, 0.0])  # unit 0 against unit 2

    def forward(self, x):
        tokens = F.relu(self.gn(x)).flatten(2).transpose(1, 2)  # (N, 4 pixels, 4 channels)
        return self.fc(F.gelu(self.ln(tokens)).mean(1))


def labelled(model, x):
    with torch.no_grad():
        return Batches(x, model(x).argmax(1))


def test_groupnorm_relu_and_layernorm_gelu_features_each_with_its_own_criterion():
    model = GroupThenLayerNorm().eval()
    x = torch.randn(400, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    sections = analyze_model(model, labelled(model, x), draws=6)
    af, dis = sections["affine"], sections["disabled"]
    assert [(layer["kind"], layer["num_features"]) for layer in af["layers"]] == [("GroupNorm(2)", 4),
                                                                                  ("LayerNorm", 4)]
    gn_layer, ln_layer = dis["layers"]
    assert (gn_layer["destination"], gn_layer["activation"]) == ("relu_fed", "relu")
    assert (ln_layer["destination"], ln_layer["activation"]) == ("relu_fed", "gelu")  # via flatten, transpose
    assert dis["criteria"] == {"relu": ACTIVATIONS["relu"].criterion, "gelu": ACTIVATIONS["gelu"].criterion}
    with torch.no_grad():
        g = model.gn(x)
        h = model.ln(F.relu(g).flatten(2).transpose(1, 2))
    relu_off = (g <= 0).flatten(2).all(2).double().mean(0)  # a channel off at every pixel
    gelu_off = (h <= -3).all(1).double().mean(0)  # a hidden unit off at every token
    assert gn_layer["channels"]["off_share"] == [float(f"{v:.6g}") for v in relu_off.tolist()]
    assert ln_layer["channels"]["off_share"] == [float(f"{v:.6g}") for v in gelu_off.tolist()]
    assert (h[..., 3] <= 0).all() and gelu_off[3] < 0.99  # <= 0 everywhere, yet alive for the GELU
    assert gn_layer["dead_channels"] == [1] and ln_layer["dead_channels"] == [1]
    assert (dis["n_dead"], dis["n_measured"], dis["fraction_dead"]) == (2, 8, 0.25)
    assert dis["norms"] == "norms" and normalizer_name(model) == "GroupNorm(2)+LayerNorm"
    ab = sections["ablation"]
    assert ab["baseline_acc"] == ab["disabled_zeroed_acc"] == 1.0  # GELU(0) = 0: as free to zero as ReLU(0)
    assert ab["by_destination"]["relu_fed"]["n_zeroed"] == 2 and ab["random_zeroed_acc_mean"] < 1.0


def test_gamma_and_beta_of_every_normalizer_kind():
    """One feature per γ entry; a layer without γ or β acts as γ = 1, β = 0; RMSNorm has no β."""
    model = nn.ModuleDict(dict(bn=nn.BatchNorm1d(2), gn=nn.GroupNorm(1, 3), ln=nn.LayerNorm([2, 2]),
                               inorm=nn.InstanceNorm2d(2, affine=True), plain_in=nn.InstanceNorm2d(2),
                               rms=nn.RMSNorm(3)))
    set_affine(model["ln"], [[0.5, 0.004], [1.0, 2.0]], [[0.0, -1.0], [0.0, 0.0]])
    set_affine(model["rms"], [0.2, 0.03, 3.0])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.norms = model

        def forward(self, x):  # the layers are never called: only their γ and β are read
            return torch.cat([x, x], 1)

    net = Net()
    af = analyze_model(net, Batches(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)), draws=2)["affine"]
    layers = {layer["name"].split(".")[-1]: layer for layer in af["layers"]}
    assert {k: (v["kind"], v["num_features"], v["affine"], v["has_beta"]) for k, v in layers.items()} == {
        "bn": ("BatchNorm", 2, True, True), "gn": ("LayerNorm (GroupNorm(1))", 3, True, True),
        "ln": ("LayerNorm", 4, True, True), "inorm": ("InstanceNorm", 2, True, True),
        "plain_in": ("InstanceNorm", 2, False, False), "rms": ("RMSNorm", 3, True, False)}
    assert layers["ln"]["channels"]["gamma"] == [0.5, 0.004, 1.0, 2.0]
    assert layers["ln"]["channels"]["beta"] == [0.0, -1.0, 0.0, 0.0]
    assert layers["rms"]["channels"]["beta"] == [0.0, 0.0, 0.0]
    assert layers["plain_in"]["channels"]["gamma"] == [1.0, 1.0]
    assert af["n_features"] == 2 + 3 + 4 + 2 + 2 + 3
    assert af["fraction_gamma_below"]["0.01"] == 1 / 16  # the LayerNorm's 0.004
    assert af["fraction_gamma_below"]["0.05"] == 2 / 16  # and the RMSNorm's 0.03


class Block(nn.Module):
    """Pre-norm: x + attn(ln1(x)), then x + mlp(ln2(x)), the MLP's GELU after its first linear layer."""

    def __init__(self, width):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(width), nn.MultiheadAttention(width, 2, batch_first=True)
        self.ln2, self.mlp = nn.LayerNorm(width), nn.Sequential(nn.Linear(width, 16), nn.GELU(), nn.Linear(16, width))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class PreNormViT(nn.Module):
    """Patches -> tokens -> one pre-norm block -> final LayerNorm -> mean -> head, with a shape
    check in forward that fx cannot trace (as timm's and bnonly's ViTs have): the block is traced
    on its own, the final norm not at all."""

    def __init__(self, width=8):
        super().__init__()
        self.patch = nn.Conv2d(3, width, 4, stride=4)
        self.block, self.norm, self.head = Block(width), nn.LayerNorm(width), nn.Linear(width, 3)

    def forward(self, x):
        if x.shape[-1] != 8:
            raise ValueError("8x8 images only")
        return self.head(self.norm(self.block(self.patch(x).flatten(2).transpose(1, 2))).mean(1))


def test_a_vits_pre_norm_layernorms_are_not_applicable_with_the_reason():
    """A pre-norm LayerNorm feeds attention or a linear layer, never an activation: no disabled
    number at all (null and a reason), rather than one measured with a ReLU's criterion."""
    model = PreNormViT().eval()
    dests, untraced = destinations(model)
    assert list(untraced) == [""] and untraced[""].startswith("TraceError")  # the shape check
    assert dests["block.ln1"].not_applicable == "feeds MultiheadAttention (block.attn), not a ReLU-like activation"
    assert dests["block.ln2"].not_applicable == "feeds Linear (block.mlp.0), not a ReLU-like activation"
    assert dests["norm"].not_applicable.startswith("fx could not trace the model (TraceError")
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    batches = labelled(model, x)
    sections = analyze_model(model, batches, draws=2)
    dis, ab = sections["disabled"], sections["ablation"]
    assert (dis["fraction_dead"], dis["n_dead"], dis["n_measured"], dis["n_features"]) == (None, None, 0, 24)
    assert dis["not_applicable"].startswith("no normalization layer's output reaches a ReLU-like activation")
    assert [layer["fraction_dead"] for layer in dis["layers"]] == [None, None, None]
    assert dis["traced"] is False and dis["fraction_dead_relu_fed"] is None
    assert ab["not_applicable"] == dis["not_applicable"] and ab["baseline_acc"] == 1.0
    assert batches.passes == 1  # the baseline only: nothing to ablate
    assert sections["affine"]["n_features"] == 24 and sections["affine"]["not_applicable"] is None


def test_layernorm_over_hidden_units_of_an_mlp_and_its_ablation():
    """Linear -> LayerNorm -> ReLU: a feature is one hidden unit; unit 2 (γ=0, β=-1) is off for
    every input and free to zero, as a ResNet's disabled channel is."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    set_affine(model[2], [1.0, 1.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, -1.0, 0.0, 0.0, 0.0])
    x = torch.randn(200, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    sections = analyze_model(model, labelled(model, x), draws=4)
    layer = sections["disabled"]["layers"][0]
    assert (layer["destination"], layer["activation"], layer["dead_channels"]) == ("relu_fed", "relu", [2])
    assert layer["channels"]["off_share"][2] == 1.0
    ab = sections["ablation"]
    assert ab["n_zeroed"] == 1 and ab["disabled_zeroed_acc"] == 1.0 and ab["random_zeroed_acc_mean"] < 1.0


def test_a_norm_before_a_residual_sum_is_other_and_one_used_elsewhere_is_not_applicable():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True), nn.BatchNorm2d(4)

        def forward(self, x):
            out = torch.relu(self.a(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # layout ops pass through
            out = F.gelu(self.b(out) + x)
            return self.c(out) * 2  # a product is not an activation

    dests, untraced = destinations(Residual())
    assert untraced == {}
    assert (dests["a"].kind, dests["a"].activation) == ("relu_fed", "relu")
    assert (dests["b"].kind, dests["b"].activation) == ("other", "gelu")
    assert dests["c"].not_applicable == "feeds mul, not a ReLU-like activation"


def test_off_counter_threshold_is_the_activations():
    class Given(nn.LayerNorm):  # a LayerNorm (features: the last dim) whose output is its input
        def forward(self, x):
            return x

    layer = Given(2)
    out = torch.tensor([[[-4.0, 1.0], [-3.5, 2.0]], [[-2.0, 0.5], [-3.2, 0.7]]])  # (2 inputs, 2 tokens, 2 units)
    with OffCounter([("ln", layer)], {"ln": ACTIVATIONS["gelu"].threshold}) as counter:
        layer(out)
    assert counter.shares()["ln"].tolist() == [0.5, 0.0]  # unit 0 is <= -3 on both tokens of input 0 only
    with OffCounter([("ln", layer)]) as relu_counter:  # ReLU's threshold, 0, by default
        layer(out)
    assert relu_counter.shares()["ln"].tolist() == [1.0, 0.0]


def run_with(tmp_path, **kw):
    return train(TrainConfig(**{**TINY, "train": "bn", "out": str(tmp_path / "runs"), **kw}), log=lambda *_: None)


def test_baseline_is_the_runs_own_accuracy_whatever_batchnorm_statistics_it_evaluated_with(tmp_path):
    """final.pt holds the statistics of the run's last evaluation: recalibrated ones after
    recalibrate_bn (not the running averages training left), the initial ones after bn_stats=frozen.
    Evaluating it as saved gives the run's own test accuracy, and analysis.json says which they were."""
    plain, recal, frozen = (run_with(tmp_path, **kw) for kw in ({}, {"recalibrate_bn": 2}, {"bn_stats": "frozen"}))
    states = {}
    for summary, expected in ((plain, {"train": "batch", "eval": "running averages"}),
                              (recal, {"train": "batch", "eval": "recalibrated over 2 training batches"}),
                              (frozen, {"train": "running statistics frozen at their initial values",
                                        "eval": "running averages"})):
        a = analyze_run(summary["run_dir"], draws=2, figures=False)
        assert a["bn_statistics"] == summary["bn_statistics"] == expected
        assert a["sections"]["disabled"]["test"]["test_acc"] == summary["test_acc"]
        states[expected["train"] + expected["eval"]] = torch.load(f"{summary['run_dir']}/final.pt")
    p, r, f = states.values()
    assert torch.equal(p["bn.weight"], r["bn.weight"])  # recalibration leaves training as it was ...
    assert not torch.allclose(p["bn.running_mean"], r["bn.running_mean"])  # ... and replaces the statistics
    assert torch.equal(f["bn.running_mean"], torch.zeros(8)) and torch.equal(f["bn.running_var"], torch.ones(8))
