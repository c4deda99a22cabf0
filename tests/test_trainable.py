"""What trains: spec parsing, counts, frozen entries provably untouched, and the term registry."""

import inspect
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from bnonly import layers
from bnonly.models import initialize
from bnonly.trainable import (
    SPEC_HELP,
    TERMS,
    SpecError,
    bn_param_count,
    configure,
    layer_breakdown,
    parse_spec,
    plain_state_dict,
    select,
    spec_help,
    term_table_markdown,
    trainable_parameters,
)

WHAT_TRAINS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "what-trains.md"


class Tricky(nn.Module):
    """A user network whose names lie about types: selection must go by module type."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Conv2d(3, 8, 3, padding=1, bias=False)   # a conv called 'fc'
        self.linear = nn.BatchNorm2d(8)                      # a BN called 'linear'
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.bn_out = nn.BatchNorm2d(16)
        self.gn = nn.GroupNorm(4, 16)
        self.bn = nn.Linear(16, 5)                           # the output layer, called 'bn'

    def forward(self, x):
        x = torch.relu(self.linear(self.fc(x)))
        x = torch.relu(self.gn(self.bn_out(self.conv(x))))
        return self.bn(x.mean((2, 3)))


def counts(spec, **kw):
    model = Tricky()
    configure(model, spec, seed=3, **kw)
    return sum(p.numel() for p in trainable_parameters(model))


N_BN = 2 * (8 + 16)
N_OUT = 16 * 5 + 5
N_ALL = sum(p.numel() for p in Tricky().parameters())


@pytest.mark.parametrize("spec,expected", [
    ("bn", N_BN), ("gamma", 24), ("beta", 24), ("output", N_OUT), ("bn+output", N_BN + N_OUT),
    ("norm", N_BN + 32), ("all", N_ALL), ("none", 0), ("all+bn", N_ALL), ("output+output", N_OUT),
    ("random-per-channel:2", 2 * (8 + 16 + 5)), ("random:matched", N_BN), ("random:100", 100),
    ("bn+random:matched", 2 * N_BN), (" bn + output ", N_BN + N_OUT),
    ("bias", 16 + 5), ("norm+bias", N_BN + 32 + 16 + 5), ("output+bias", N_OUT + 16),
])
def test_trainable_counts(spec, expected):
    assert counts(spec) == expected


def test_bn_param_count_by_type():
    assert bn_param_count(Tricky()) == N_BN


def test_bias_trains_every_conv_and_linear_bias_and_nothing_else():
    """BitFit: the conv's and the output layer's biases; a conv built without one and the norm β are not biases."""
    assert set(select(Tricky(), "bias").masks) == {"conv.bias", "bn.bias"}
    assert set(select(Tricky(), "norm+bias").masks) == {"linear.weight", "linear.bias", "bn_out.weight",
                                                        "bn_out.bias", "gn.weight", "gn.bias", "conv.bias", "bn.bias"}
    with pytest.raises(SpecError, match="'bias' selects nothing: the model has no conv or linear layer with a bias"):
        select(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)), "bias")


def _layernorm_net() -> nn.Module:
    """No BatchNorm at all: a LayerNorm (γ, β), an RMSNorm (γ only) and a bias-free LayerNorm (γ only)."""
    return nn.Sequential(nn.Linear(10, 20), nn.LayerNorm(20), nn.Linear(20, 20), nn.RMSNorm(20),
                         nn.Linear(20, 30), nn.LayerNorm(30, bias=False), nn.Linear(30, 3))


def test_random_matched_matches_the_normalizer_the_model_has():
    """BatchNorm γ+β where the model has BatchNorm (Tricky's GroupNorm does not count: the pinned count);
    otherwise every normalization γ and β, as many as 'norm' trains."""
    assert counts("random:matched") == N_BN and layers.norm_param_count(Tricky()) == N_BN + 32
    model = _layernorm_net()
    assert layers.norm_param_count(model) == 2 * 20 + 20 + 30 == select(model, "norm").num_trainable(model)
    selection = select(model, "random:matched", seed=0)
    assert selection.num_trainable(model) == 90
    assert set(selection.masks) <= {"0.weight", "2.weight", "4.weight", "6.weight"}
    for plain in (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
                  nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4, elementwise_affine=False), nn.Linear(4, 2))):
        with pytest.raises(SpecError, match="'random:matched' selects nothing \\(the model has no normalization "
                                            "layer with γ/β"):
            select(plain, "random:matched")
    assert counts("random:matched+bias") == N_BN + 21


def test_random_per_channel_on_linear_layers_is_per_output_row():
    model = _layernorm_net()
    masks = select(model, "random-per-channel:3", seed=1).masks
    assert set(masks) == {"0.weight", "2.weight", "4.weight", "6.weight"}
    for name, mask in masks.items():
        assert mask.shape == dict(model.named_parameters())[name].shape and (mask.sum(1) == 3).all()


@pytest.mark.parametrize("spec", ["bnn", "random", "random:", "random:-3", "random-per-channel:x", "bn++output", "",
                                  "ALL"])
def test_bad_spec_names_the_term(spec):
    with pytest.raises(SpecError, match="valid:"):
        select(Tricky(), spec)


def test_impossible_counts_are_clear_errors():
    with pytest.raises(SpecError, match="more weights"):
        select(Tricky(), "random:10000000")
    with pytest.raises(SpecError, match="more weights than layer"):
        select(Tricky(), "random-per-channel:1000")


def test_random_subsets_follow_their_seed():
    a = select(Tricky(), "random:matched", seed=1).masks
    b = select(Tricky(), "random:matched", seed=1).masks
    c = select(Tricky(), "random:matched", seed=2).masks
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k not in c or not torch.equal(a[k], c[k]) for k in a)


def test_random_per_channel_is_per_channel():
    masks = select(Tricky(), "random-per-channel:3", seed=0).masks
    assert set(masks) == {"fc.weight", "conv.weight", "bn.weight"}
    for m in masks.values():
        assert (m.reshape(m.shape[0], -1).sum(1) == 3).all()


def test_random_matched_spreads_over_layers():
    model = nn.Sequential(*[nn.Linear(100, 100) for _ in range(4)], nn.BatchNorm1d(100))
    masks = select(model, "random:matched", seed=0).masks
    per_layer = [int(m.sum()) for m in masks.values()]
    assert sum(per_layer) == 200 and len(per_layer) == 4 and min(per_layer) > 20


def _steps(model, n=5):
    opt = torch.optim.SGD(trainable_parameters(model), lr=0.5, momentum=0.9, weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        x = torch.randn(16, 3, 8, 8, generator=gen)
        y = torch.randint(0, 5, (16,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("spec", ["bn", "gamma", "output", "random-per-channel:2", "random:matched", "bn+random:50"])
def test_frozen_entries_bitwise_unchanged(spec):
    model = Tricky()
    selection = configure(model, spec, seed=5)
    before = plain_state_dict(model)
    _steps(model)
    after = plain_state_dict(model)
    params = {n for n, _ in Tricky().named_parameters()}
    moved_selected = 0
    for name in params:
        mask = selection.masks.get(name, False)
        mask = torch.full_like(before[name], mask, dtype=torch.bool) if isinstance(mask, bool) else mask
        assert torch.equal(before[name][~mask], after[name][~mask]), f"frozen entries of {name} moved"
        moved_selected += int((before[name][mask] != after[name][mask]).sum())
    assert moved_selected > 0.9 * selection.num_trainable(Tricky())


def test_batch_statistics_used_and_updated_whatever_trains():
    model = Tricky()
    configure(model, "output")
    _steps(model, 1)
    assert not torch.equal(model.linear.running_mean, torch.zeros(8))
    assert model.linear.num_batches_tracked.item() == 1


def test_plain_state_dict_loads_into_plain_model():
    model = Tricky()
    configure(model, "random:matched+bn", seed=0)
    _steps(model, 2)
    plain = Tricky()
    plain.load_state_dict(plain_state_dict(model))
    model.eval(), plain.eval()
    x = torch.randn(4, 3, 8, 8)
    assert torch.equal(model(x), plain(x))
    assert set(plain_state_dict(model)) == set(plain.state_dict())


def test_no_affine_ablation():
    model = Tricky()
    configure(model, "all", bn_affine=False)
    for bn in (model.linear, model.bn_out):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.weight.requires_grad
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias)) and not bn.bias.requires_grad
    assert sum(p.numel() for p in trainable_parameters(model)) == N_ALL - N_BN
    with pytest.raises(SpecError, match="affine is disabled"):
        configure(Tricky(), "bn", bn_affine=False)


def test_layer_breakdown_reports_partial_tensors():
    model = Tricky()
    configure(model, "random-per-channel:2+bn")
    rows = {r["name"]: r for r in layer_breakdown(model)}
    assert rows["conv.weight"]["trainable"] == 32 and rows["conv.weight"]["total"] == 16 * 8 * 9
    assert rows["conv.bias"]["trainable"] == 0
    assert rows["linear.weight"]["trainable"] == 8 and rows["linear.weight"]["layer"] == "BatchNorm2d"
    assert sum(r["trainable"] for r in rows.values()) == 2 * 29 + N_BN


def test_random_draws_are_pinned():
    """Literal draws: a change here silently changes every random baseline's subset."""
    masks = select(Tricky(), "random:10+random:10", seed=7).masks
    assert {n: m.flatten().nonzero().flatten().tolist() for n, m in masks.items()} == {
        "fc.weight": [18], "bn.weight": [44, 55],
        "conv.weight": [51, 54, 90, 156, 461, 609, 617, 679, 706, 849, 873, 886, 894, 968, 977, 1114, 1133]}
    per_channel = select(Tricky(), "random-per-channel:1", seed=7).masks["bn.weight"]
    assert per_channel.int().argmax(1).tolist() == [4, 7, 2, 7, 13]


# ---------------------------------------------------------------- layer kinds: init and what-trains agree

def _every_norm_layer() -> dict[str, nn.Module]:
    """One of every torch.nn normalization layer, affine where it can be, and the non-affine forms.
    (A LazyBatchNorm/LazyInstanceNorm becomes its plain class at its first forward.)"""
    return dict(
        bn1=nn.BatchNorm1d(4), bn2=nn.BatchNorm2d(4), bn3=nn.BatchNorm3d(4), sync=nn.SyncBatchNorm(4),
        gn=nn.GroupNorm(2, 4), ln=nn.LayerNorm(4), in1=nn.InstanceNorm1d(4, affine=True),
        in2=nn.InstanceNorm2d(4, affine=True), in3=nn.InstanceNorm3d(4, affine=True), rms=nn.RMSNorm(4),
        lrn=nn.LocalResponseNorm(2), bn_plain=nn.BatchNorm2d(4, affine=False),
        gn_plain=nn.GroupNorm(2, 4, affine=False), ln_plain=nn.LayerNorm(4, elementwise_affine=False),
        in_plain=nn.InstanceNorm2d(4), rms_plain=nn.RMSNorm(4, elementwise_affine=False),
        ln_nobias=nn.LayerNorm(4, bias=False))


def test_every_torch_norm_layer_with_parameters_is_a_norm_type():
    table = _every_norm_layer()
    in_torch = {c for n, c in vars(nn).items()
                if inspect.isclass(c) and issubclass(c, nn.Module) and "Norm" in n and not n.startswith("Lazy")}
    assert in_torch <= {type(m) for m in table.values()}, "torch has a new norm layer: add it to the table"
    assert {n for n, m in table.items() if not isinstance(m, layers.NORM_TYPES)} == {"lrn"}  # it has no γ/β


def test_norm_trains_exactly_what_init_initializes():
    """γ/β the initializer sets (every one starts at 7 here) are exactly what ``norm`` selects."""
    model = nn.ModuleDict(_every_norm_layer())
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    initialize(model, gamma_init="uniform", seed=0)
    initialized = {n for n, p in model.named_parameters() if (p != 7).all()}
    assert initialized == {n for n, _ in model.named_parameters()}  # every norm layer parameter is a γ or β
    assert set(select(model, "norm").masks) == initialized == set(layers.norm_affine_params(model))
    assert {"rms.weight", "ln_nobias.weight", "sync.bias"} <= initialized and "ln_nobias.bias" not in initialized


def test_random_baselines_draw_from_exactly_the_kaiming_layers():
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv3d(4, 4, 1), nn.ConvTranspose2d(4, 4, 3),
                          nn.Linear(4, 6), nn.Bilinear(3, 3, 2), nn.BatchNorm1d(6), nn.Embedding(5, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    initialize(model, seed=0)
    kaiming = {n for n, p in model.named_parameters() if n.endswith("weight") and (p != 7).all()} - {"6.weight"}
    assert kaiming == {"0.weight", "1.weight", "2.weight", "4.weight"}
    assert set(select(model, "random-per-channel:1").masks) == kaiming
    assert set(select(model, f"random:{sum(p.numel() for n, p in model.named_parameters() if n in kaiming)}").masks) \
        == kaiming


# ---------------------------------------------------------------- the term registry

def _first_table(page: Path) -> str:
    return re.search(r"^\|.*?(?=\n[^|]|\Z)", page.read_text(encoding="utf-8"), re.S | re.M).group(0)


def test_docs_term_table_is_the_generated_one():
    """docs/what-trains.md's table is term_table_markdown()'s output: regenerate it when a term changes."""
    assert _first_table(WHAT_TRAINS_PAGE) == term_table_markdown(), (
        "replace the table in docs/what-trains.md with the output of "
        "python3 -c 'from bnonly.trainable import term_table_markdown as t; print(t())'")


def test_spec_help_lists_every_term_in_registry_order():
    assert SPEC_HELP == spec_help() == ("terms joined by '+': all, none, bn, gamma, beta, norm, output, bias, "
                                        "random-per-channel:K, random:matched|N, supermask:P (e.g. 'bn+output')")
    assert term_table_markdown().count("\n| `") == len(TERMS) == 11


@pytest.mark.parametrize("spec,reason", [
    ("bn:2", "takes no argument"), ("random-per-channel", "takes an argument"), ("random:ten", "not a whole number"),
    ("random:", "not a whole number"), ("gamma+random:matched+x", "unknown what-trains term 'x'")])
def test_bad_terms_say_why(spec, reason):
    with pytest.raises(SpecError, match=f"{reason}.*valid: terms joined by"):
        parse_spec(spec)


def test_a_registered_term_is_a_spec_term_until_unregistered():
    @TERMS.register("fc-bias", help="the output layer's bias")
    def _fc_bias(model, arg, ctx):
        return {"bn.bias": True}

    try:
        assert parse_spec("bn+fc-bias") == ["bn", "fc-bias"]
        assert "| `fc-bias` | the output layer's bias |" in term_table_markdown()
        assert counts("bn+fc-bias") == N_BN + 5 and "fc-bias" in spec_help()
    finally:
        TERMS.unregister("fc-bias")
    with pytest.raises(SpecError, match="unknown"):
        parse_spec("fc-bias")


@pytest.mark.parametrize("result,match", [({"nope.weight": True}, "not a parameter"),
                                          ({"bn.bias": torch.ones(4, dtype=torch.bool)}, "shape \\(5,\\)"),
                                          ({"bn.bias": torch.ones(5)}, "neither True nor a bool")])
def test_a_selector_breaking_its_contract_is_named(result, match):
    TERMS.register("broken", lambda model, arg, ctx: result)
    try:
        with pytest.raises(ValueError, match=f"'broken'.*{match}"):
            select(Tricky(), "bn+broken")
    finally:
        TERMS.unregister("broken")
