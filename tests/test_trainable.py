"""What trains: spec parsing, counts, and frozen entries provably untouched."""

import pytest
import torch
from torch import nn

from bnonly.trainable import (SpecError, bn_param_count, configure, layer_breakdown, plain_state_dict, select,
                              trainable_parameters)


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
])
def test_trainable_counts(spec, expected):
    assert counts(spec) == expected


def test_bn_param_count_by_type():
    assert bn_param_count(Tricky()) == N_BN


@pytest.mark.parametrize("spec", ["bnn", "random", "random:", "random:-3", "random-per-channel:x", "bn++output", "", "ALL"])
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
