"""Model registry, architectures and initialization: counts from paper/PAPER.md, real init values."""

import hashlib
import math

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnonly.cli import main
from bnonly.layers import output_layer
from bnonly.models import (
    GAMMA_INITS,
    MODEL_FAMILIES,
    WEIGHT_INITS,
    create_model,
    family_of,
    initialize,
    list_models,
    model_families,
)
from bnonly.trainable import configure, count_trainable


def _counts(model: nn.Module) -> tuple[int, int, int]:
    """(all params, BN γ+β found by module type, params of the last nn.Linear)."""
    total = sum(p.numel() for p in model.parameters())
    bn = sum(p.numel() for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters(recurse=False))
    out = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return total, bn, sum(p.numel() for p in out.parameters())


# (name, all params, BN params, output layer params or None): paper/PAPER.md and torchvision.
COUNTS = [
    ("cifar_resnet_14", 175_258, 1_120, 650),
    ("cifar_resnet_20", 272_474, 1_568, 650),
    ("cifar_resnet_32", 466_906, 2_464, 650),
    ("cifar_resnet_56", 855_770, 4_256, 650),
    ("cifar_resnet_110", 1_730_714, 8_288, 650),
    ("cifar_resnet_218", 3_480_602, 16_352, 650),
    ("cifar_resnet_434", 6_980_378, 32_480, 650),
    ("cifar_resnet_866", 13_979_930, 64_736, 650),
    ("cifar_resnet_14_16", 175_258, 1_120, 650),
    ("cifar_resnet_14_32", 696_618, 2_240, 32 * 4 * 10 + 10),
    ("cifar_resnet_14_64", 2_777_674, 4_480, 64 * 4 * 10 + 10),
    ("cifar_resnet_14_128", 11_093_130, 8_960, 128 * 4 * 10 + 10),
    ("cifar_resnet_14_256", 44_337_418, 17_920, 256 * 4 * 10 + 10),
    ("cifar_resnet_14_512", 177_279_498, 35_840, 512 * 4 * 10 + 10),
    ("cifar_vgg_11", 9_231_114, 5_504, 5_130),
    ("cifar_vgg_13", 9_416_010, 5_888, 5_130),
    ("cifar_vgg_16", 14_728_266, 8_448, 5_130),
    ("cifar_vgg_19", 20_040_522, 11_008, 5_130),
    ("imagenet_resnet_18", 11_689_512, None, 513_000),
    ("imagenet_resnet_34", 21_797_672, None, 513_000),
    ("imagenet_resnet_50", 25_557_032, 53_120, 2_049_000),
    ("imagenet_resnet_50_64", 25_557_032, 53_120, 2_049_000),
    ("imagenet_resnet_101", 44_549_160, None, 2_049_000),
    ("imagenet_resnet_152", 60_192_808, None, 2_049_000),
    ("imagenet_resnet_200", 64_673_832, 176_000, 2_049_000),
    ("imagenet_resnet_50_128", 68_883_240, None, 2_049_000),
]


@pytest.mark.parametrize("name,total,bn,out", COUNTS, ids=[c[0] for c in COUNTS])
def test_parameter_counts_match_paper(name, total, bn, out):
    got_total, got_bn, got_out = _counts(create_model(name, device="meta"))
    assert got_total == total
    if bn is not None:
        assert got_bn == bn
    assert got_out == out


def test_meta_construction_under_context_manager():
    with torch.device("meta"):
        model = create_model("cifar_resnet_866")
    assert all(p.is_meta for p in model.parameters())
    assert _counts(model)[0] == 13_979_930


def test_basic_block_width_scales_every_stage():
    assert _counts(create_model("imagenet_resnet_18_64", device="meta"))[0] == 11_689_512
    model = create_model("imagenet_resnet_18_32", device="meta")
    assert model.conv1.out_channels == 32 and model.fc.in_features == 256


def test_num_classes_default_and_override():
    assert create_model("cifar_resnet_8").fc.out_features == 10
    assert create_model("cifar_vgg_11", device="meta").fc.out_features == 10
    assert create_model("imagenet_resnet_18", device="meta").fc.out_features == 1000
    assert create_model("cifar_resnet_8", 100).fc.out_features == 100
    with pytest.raises(ValueError, match="num_classes"):
        create_model("cifar_resnet_8", 0)


def test_output_layer_is_last_linear():
    for name in ("cifar_resnet_8", "cifar_vgg_11", "imagenet_resnet_50"):
        model = create_model(name, device="meta")
        assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1] is model.fc


@pytest.mark.parametrize(
    "name,num_classes,size,expected",
    [
        ("cifar_resnet_8", None, 32, 10),
        ("cifar_resnet_14_8", 7, 32, 7),
        ("cifar_vgg_11", None, 32, 10),
        ("imagenet_resnet_18_16", None, 64, 1000),
        ("imagenet_resnet_50", 13, 64, 13),
    ],
)
def test_forward_shape(name, num_classes, size, expected):
    model = create_model(name, num_classes).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, size, size))
    assert y.shape == (2, expected)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["cifar_resnet_8", "cifar_vgg_11", "imagenet_resnet_18_16"])
def test_channels_last_matches_contiguous(name):
    model = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["cifar_resnet_8", "imagenet_resnet_18_8"])
def test_compiles_without_graph_breaks(name):
    torch._dynamo.reset()
    model = create_model(name).train()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(compiled(x), create_model(name).train()(x))


def _gammas(model):
    return torch.cat([m.weight.detach().flatten() for m in model.modules() if isinstance(m, _BatchNorm)])


def _betas(model):
    return torch.cat([m.bias.detach().flatten() for m in model.modules() if isinstance(m, _BatchNorm)])


def test_uniform_gamma_init_applied():
    model = create_model("cifar_resnet_14_64")  # 2,240 γ
    gamma = _gammas(model)
    assert gamma.numel() == 2_240
    assert gamma.min() >= 0 and gamma.max() <= 1
    assert (gamma != 1).all()
    assert abs(gamma.mean().item() - 0.5) < 0.03  # std of the mean ≈ 0.29 / sqrt(2240) ≈ 0.006
    assert abs(gamma.std().item() - math.sqrt(1 / 12)) < 0.02
    assert torch.equal(_betas(model), torch.zeros_like(_betas(model)))


def test_ones_gamma_init_applied():
    model = create_model("cifar_resnet_14_64", gamma_init="ones")
    assert torch.equal(_gammas(model), torch.ones(2_240))
    assert torch.equal(_betas(model), torch.zeros(2_240))


def test_conv_and_linear_weights_are_kaiming_normal():
    model = create_model("cifar_resnet_14_64")
    conv = model.blocks[-1].conv2  # 256 x 256 x 3 x 3, fan_in 2,304
    w = conv.weight.detach()
    assert w.numel() == 589_824
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(math.sqrt(2 / 2_304), rel=0.01)
    fc = model.fc  # Kaiming on the output layer too, bias U(±1/sqrt(256))
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.1)
    assert fc.bias.abs().max().item() <= 1 / 16 and (fc.bias != 0).any()


def _digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("name,seed,digest", [("cifar_resnet_14", 0, "17c82db1de43ff1e"),
                                              ("cifar_vgg_11", 3, "3dc079dccf8d5eae"),
                                              ("imagenet_resnet_18_16", 1, "d0f64729993bc744")])
def test_default_init_is_bit_identical_to_before_weight_distributions(name, seed, digest):
    """Digests of every key and value, taken with the code before WEIGHT_INITS existed."""
    assert _digest(create_model(name, seed=seed)) == digest
    assert _digest(create_model(name, seed=seed, weight_init="kaiming_normal")) == digest


def _weights(name: str, weight_init: str, seed: int = 0) -> list[torch.Tensor]:
    model = create_model(name, seed=seed, weight_init=weight_init)
    return [m.weight.detach().reshape(m.weight.shape[0], -1) for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_kaiming_uniform_has_kaimings_variance_within_its_bound():
    for w in _weights("cifar_resnet_14_64", "kaiming_uniform")[-3:]:
        bound = math.sqrt(6 / w.shape[1])
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert w.std().item() == pytest.approx(math.sqrt(2 / w.shape[1]), rel=0.02)


def test_orthogonal_rows_are_orthonormal_up_to_the_relu_gain():
    weights = _weights("cifar_resnet_14", "orthogonal")
    assert len(weights) == 16
    for w in weights:
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w  # columns when the layer widens (the output layer not)
        torch.testing.assert_close(small, 2 * torch.eye(min(w.shape)), atol=1e-5, rtol=0)
    assert weights[-1].shape == (10, 64)


def test_signed_constant_is_plus_or_minus_kaimings_std():
    weights = _weights("cifar_resnet_14", "signed_constant")
    for w in weights:
        sigma = torch.tensor(math.sqrt(2.0) / math.sqrt(w.shape[1]))  # the float32 of Kaiming normal's std
        assert set(w.unique().tolist()) == {-sigma.item(), sigma.item()}
    positive = torch.cat([w.flatten() for w in weights]) > 0  # 173,488 fair signs: 0.5 ± 0.0012
    assert abs(positive.float().mean().item() - 0.5) < 0.005


def test_biases_keep_pytorchs_default_under_every_relu_distribution():
    for weight_init in ("kaiming_normal", "kaiming_uniform", "orthogonal", "signed_constant"):
        conv = create_model("cifar_vgg_11", seed=0, weight_init=weight_init).layers[0].conv
        assert conv.bias.abs().max() <= 1 / math.sqrt(27) and conv.bias.std() > 0.05


@pytest.mark.parametrize("weight_init", ["kaiming_uniform", "orthogonal", "signed_constant", "timm_vit"])
def test_every_distribution_follows_its_seed_alone(weight_init):
    torch.manual_seed(1)
    a = create_model("cifar_resnet_8", seed=4, weight_init=weight_init)
    torch.manual_seed(2)
    b = create_model("cifar_resnet_8", seed=4, weight_init=weight_init)
    _assert_state_equal(a, b)
    assert not torch.equal(a.conv.weight, create_model("cifar_resnet_8", seed=5, weight_init=weight_init).conv.weight)
    assert not torch.equal(a.conv.weight, create_model("cifar_resnet_8", seed=4).conv.weight)
    assert torch.equal(a.bn.weight, create_model("cifar_resnet_8", seed=4, weight_init=weight_init).bn.weight)


def test_timm_vit_distribution_on_linear_and_conv_layers():
    net = initialize(nn.Sequential(nn.Conv2d(3, 64, 4, stride=4), nn.Flatten(), nn.Linear(64, 4096)), seed=0,
                     weight_init="timm_vit")
    assert net[2].weight.std().item() == pytest.approx(0.02, rel=0.01) and torch.equal(net[2].bias, torch.zeros(4096))
    assert net[0].weight.abs().max() <= 1 / math.sqrt(48) and (net[0].bias != 0).all()


def test_weight_distributions_registered_and_bad_names_listed():
    assert list(WEIGHT_INITS) == ["kaiming_normal", "kaiming_uniform", "orthogonal", "signed_constant", "timm_vit"]
    message = "'kaiming_normal', 'kaiming_uniform', 'orthogonal', 'signed_constant', 'timm_vit'"
    with pytest.raises(ValueError, match=message):
        create_model("cifar_resnet_8", weight_init="xavier")
    with pytest.raises(ValueError, match=message):
        initialize(nn.Linear(2, 2), weight_init="normal")


def test_a_registered_distribution_and_a_familys_default():
    @WEIGHT_INITS.register("constant_half", help="every weight 0.5, biases 0")
    def _half(layer, fan_in, generator):
        layer.weight.fill_(0.5)
        if layer.bias is not None:
            layer.bias.zero_()

    @MODEL_FAMILIES.register("test_lin", regex="test_lin", patterns="test_lin", num_classes=3, input_shape=(4,),
                             help="a linear layer", examples=["test_lin"], weight_init="orthogonal")
    def _lin(num_classes):
        return nn.Sequential(nn.Linear(4, 4), nn.Linear(4, num_classes))

    try:
        assert family_of("test_lin").weight_init == "orthogonal" and family_of("cifar_resnet_8").weight_init == \
            "kaiming_normal"
        w = create_model("test_lin")[0].weight
        torch.testing.assert_close(w @ w.T, 2 * torch.eye(4), atol=1e-5, rtol=0)
        assert torch.equal(create_model("test_lin", weight_init="constant_half")[0].weight, torch.full((4, 4), 0.5))
    finally:
        WEIGHT_INITS.unregister("constant_half")
        MODEL_FAMILIES.unregister("test_lin")
    MODEL_FAMILIES.register("test_bad_init", lambda num_classes: nn.Linear(2, 2), regex="x", patterns="x",
                            num_classes=2, input_shape=(2,), weight_init="xavier")
    try:
        with pytest.raises(TypeError, match="weight_init='xavier', which is not one of kaiming_normal"):
            create_model("cifar_resnet_8")
    finally:
        MODEL_FAMILIES.unregister("test_bad_init")


def test_bad_gamma_init_lists_choices():
    with pytest.raises(ValueError, match="'uniform', 'ones'"):
        create_model("cifar_resnet_8", gamma_init="normal")
    with pytest.raises(ValueError, match="'uniform', 'ones'"):
        initialize(nn.BatchNorm2d(3), gamma_init="one")
    assert GAMMA_INITS == ("uniform", "ones")


def _assert_state_equal(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_same_seed_bit_identical_regardless_of_global_rng():
    torch.manual_seed(1)
    a = create_model("cifar_resnet_20", seed=7)
    torch.manual_seed(2)
    torch.rand(123)
    b = create_model("cifar_resnet_20", seed=7)
    _assert_state_equal(a, b)


def test_different_seed_different_weights():
    a = create_model("cifar_resnet_8", seed=0)
    b = create_model("cifar_resnet_8", seed=1)
    assert not torch.equal(a.conv.weight, b.conv.weight)
    assert not torch.equal(a.fc.weight, b.fc.weight)
    assert not torch.equal(a.bn.weight, b.bn.weight)
    c = create_model("cifar_resnet_8", seed=None)
    d = create_model("cifar_resnet_8", seed=None)
    assert not torch.equal(c.conv.weight, d.conv.weight)


def test_create_model_leaves_global_rng_untouched():
    torch.manual_seed(3)
    expected = torch.rand(5)
    torch.manual_seed(3)
    create_model("cifar_resnet_8", seed=None)
    assert torch.equal(torch.rand(5), expected)


def test_draws_match_torch_init_with_one_generator():
    """The first layer's draws are exactly torch.nn.init's Kaiming normal then the default bias."""
    model = create_model("cifar_vgg_11", seed=5)
    g = torch.Generator().manual_seed(5)
    w = nn.init.kaiming_normal_(torch.empty(64, 3, 3, 3), mode="fan_in", nonlinearity="relu", generator=g)
    b = torch.empty(64).uniform_(-1 / math.sqrt(27), 1 / math.sqrt(27), generator=g)
    gamma = torch.empty(64).uniform_(0, 1, generator=g)
    first = model.layers[0]
    assert torch.equal(first.conv.weight, w)
    assert torch.equal(first.conv.bias, b)
    assert torch.equal(first.bn.weight, gamma)


def test_values_independent_of_dtype():
    a = initialize(create_model("cifar_resnet_8"), seed=4)
    b = initialize(create_model("cifar_resnet_8").to(torch.float64), seed=4)
    assert torch.equal(b.conv.weight.float(), a.conv.weight)


class UserNet(nn.Module):
    """A user's own network; the norm layer's attribute name hides its type on purpose."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 64, 5)
        self.fc_weightlike = nn.GroupNorm(8, 64)
        self.inorm = nn.InstanceNorm1d(64, affine=True)
        self.inorm_plain = nn.InstanceNorm1d(64)
        self.proj = nn.Linear(64, 512, bias=False)
        self.ln = nn.LayerNorm(512)
        self.head = nn.Linear(512, 3)
        self.scale = nn.Parameter(torch.full((3,), 7.0))  # not a layer: left alone

    def forward(self, x):
        x = self.inorm(self.fc_weightlike(self.conv(x))).mean(-1)
        return self.head(self.ln(self.proj(x))) * self.scale


def test_initialize_user_module_with_other_norms():
    torch.manual_seed(0)
    net = initialize(UserNet(), seed=11)
    for norm in (net.fc_weightlike, net.inorm, net.ln):
        assert norm.weight.min() >= 0 and norm.weight.max() <= 1
        assert (norm.weight != 1).any()
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    assert net.proj.weight.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.05)
    assert net.conv.bias.abs().max().item() <= 1 / math.sqrt(20)
    assert torch.equal(net.scale, torch.full((3,), 7.0))
    torch.manual_seed(99)
    _assert_state_equal(net, initialize(UserNet(), seed=11))

    ones = initialize(UserNet(), gamma_init="ones")
    for norm in (ones.fc_weightlike, ones.inorm, ones.ln):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    assert net(torch.randn(2, 4, 16)).shape == (2, 3)


def test_initialize_resets_running_stats():
    bn = nn.BatchNorm2d(4)
    bn(torch.randn(8, 4, 3, 3) * 5 + 2)
    initialize(bn)
    assert torch.equal(bn.running_mean, torch.zeros(4))
    assert torch.equal(bn.running_var, torch.ones(4))
    assert bn.num_batches_tracked.item() == 0


def test_initialize_rejects_uninitialized_lazy_modules():
    with pytest.raises(ValueError, match="forward pass"):
        initialize(nn.LazyLinear(3))


def test_list_models_names_every_family():
    patterns = list_models()
    families = ("cifar_resnet_D", "cifar_resnet_D_W", "cifar_vgg_11|13|16|19", "imagenet_resnet_18|34|50|101|152|200")
    for needle in (*families, "imagenet_resnet_D_W"):
        assert any(p.startswith(needle) for p in patterns), needle


@pytest.mark.parametrize(
    "name,reason",
    [
        ("cifar_resnet_15", "6n+2"),
        ("cifar_resnet_2", "6n+2"),
        ("imagenet_resnet_19", "18, 34, 50, 101, 152, 200"),
        ("cifar_vgg_12", "11, 13, 16, 19"),
        ("resnet50", "matches no known pattern"),
        ("cifar_resnet_20_0", "matches no known pattern"),
        ("cifar_resnet_20_", "matches no known pattern"),
        ("", "matches no known pattern"),
    ],
)
def test_bad_names_raise_with_valid_patterns(name, reason):
    with pytest.raises(ValueError) as info:
        create_model(name, device="meta")
    message = str(info.value)
    assert repr(name) in message
    assert reason in message
    for pattern in list_models():
        assert pattern in message


def test_a_registered_family_builds_by_name_until_unregistered():
    @MODEL_FAMILIES.register("test_mlp", regex=r"test_mlp_(?P<hidden>\d+)", patterns="test_mlp_H", num_classes=4,
                             input_shape=(8,), help="an MLP", examples=["test_mlp_32"])
    def _mlp(hidden, num_classes):
        h = int(hidden)
        return nn.Sequential(nn.Linear(8, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Linear(h, num_classes))

    try:
        model = create_model("test_mlp_32", seed=3)
        assert model[-1].out_features == 4
        assert (model[1].weight != 1).any() and model[1].weight.max() <= 1
        assert "test_mlp_H" in list_models() and family_of("test_mlp_32").input_shape == (8,)
    finally:
        MODEL_FAMILIES.unregister("test_mlp")
    assert "test_mlp_H" not in list_models()


def test_a_family_missing_part_of_its_contract_is_named():
    MODEL_FAMILIES.register("test_broken", lambda num_classes: nn.Linear(2, num_classes), regex="test_broken")
    try:
        with pytest.raises(TypeError, match="'test_broken' was registered without patterns, num_classes, input_shape"):
            create_model("cifar_resnet_8")
    finally:
        MODEL_FAMILIES.unregister("test_broken")


EXAMPLES = [(family.name, name) for family in model_families() for name in family.examples]


def test_every_family_has_examples_and_help():
    assert {"cifar_resnet", "cifar_vgg", "imagenet_resnet", "vit", "mlp"} <= {f.name for f in model_families()}
    assert all(f.examples and f.help and f.patterns for f in model_families())


@pytest.mark.parametrize("family,name", EXAMPLES, ids=[name for _, name in EXAMPLES])
def test_every_example_builds_forwards_and_counts(family, name):
    """Each registered family's examples: named by that family, built with any class count,
    one batch through, and the same parameters whether built for real or on the meta device."""
    found = family_of(name)
    assert found.name == family
    assert output_layer(create_model(name, device="meta"))[1].out_features == found.num_classes
    model = create_model(name, 7, seed=0).eval()
    with torch.no_grad():
        y = model(torch.randn(2, *found.input_shape, generator=torch.Generator().manual_seed(0)))
    assert y.shape == (2, 7) and torch.isfinite(y).all()
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(p.numel() for p in create_model(name, 7, device="meta").parameters())
    assert output_layer(model)[1].out_features == 7
    configure(model, "all")
    assert count_trainable(model) == total > 0


def test_models_command_prints_every_family(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for family in model_families():
        for text in (family.name, family.help, *family.patterns, *family.examples):
            assert text in out
    assert out.index("cifar_resnet") < out.index("cifar_vgg") < out.index("imagenet_resnet") < out.index("vit:") \
        < out.index("mlp:")
