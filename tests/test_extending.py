"""Extending bnonly from outside it: a model family, a what-trains term and a data format, each
registered here (bnonly itself is not edited) and trained end to end with ``bnonly.train``.

Copy the fixture and the test of what you are adding: the registration is all there is to it.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bnonly
from bnonly import layers
from bnonly.data import DATA_FORMATS, ArrayDataset, DatasetSource, OpenOptions, array_source, local_path
from bnonly.models import MODEL_FAMILIES
from bnonly.trainable import TERMS, SelectContext, parse_spec, term_table_markdown

TINY = dict(data="synthetic:train=64,test=32,classes=4,size=16", batch_size=16, epochs=1, milestones=[1],
            schedule_epochs=1, lr=0.5, device="cpu", threads=1, progress=False)


def run(tmp_path: Path, **fields) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train one tiny run; its summary, and its initial and final weights (plain state dicts)."""
    summary = bnonly.train(bnonly.TrainConfig(**{**TINY, "out": str(tmp_path / "runs"), **fields}))
    folder = Path(summary["run_dir"])
    return summary, torch.load(folder / "init.pt"), torch.load(folder / "final.pt")


def changed(init: dict[str, torch.Tensor], final: dict[str, torch.Tensor]) -> set[str]:
    """Parameters and buffers whose final value differs from the initial one, bit for bit."""
    return {k for k in final if not torch.equal(init[k], final[k])}


# ---------------------------------------------------------------- (a) a model family

class ToyConvNet(nn.Module):
    """conv3x3-BN-ReLU twice, global average pool, linear: the smallest BN-only-trainable CNN."""

    def __init__(self, width: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture
def toy_family():
    @MODEL_FAMILIES.register("toy_convnet", regex=r"toy_convnet_(?P<width>[1-9]\d*)",
                             patterns="toy_convnet_W (width W)", num_classes=10, input_shape=(3, 32, 32),
                             help="two conv-BN-ReLU layers, for the test", examples=["toy_convnet_8"])
    def build(width: str, num_classes: int) -> nn.Module:
        return ToyConvNet(int(width), num_classes)

    yield
    MODEL_FAMILIES.unregister("toy_convnet")


def test_a_new_model_family_trains_end_to_end(tmp_path, toy_family):
    summary, init, final = run(tmp_path, model="toy_convnet_8", train="bn")
    assert (summary["total_params"], summary["bn_params"], summary["trainable_params"]) == \
        (3 * 8 * 9 + 8 * 8 * 9 + 2 * 2 * 8 + 8 * 4 + 4, 2 * 2 * 8, 2 * 2 * 8)
    model = bnonly.create_model("toy_convnet_8", 4, seed=0)  # the seeded paper init applies to it too
    params = {n for n, _ in model.named_parameters()}
    assert all(torch.equal(init[k], v) for k, v in model.state_dict().items() if k in params)
    assert 0 < float(init["features.1.weight"].min()) and float(init["features.1.weight"].max()) < 1
    assert changed(init, final) & params == {"features.1.weight", "features.1.bias", "features.4.weight",
                                             "features.4.bias"}
    model.load_state_dict(final)  # final.pt has the plain architecture's keys


# ---------------------------------------------------------------- (b) a what-trains term

@pytest.fixture
def first_bn_term():
    @TERMS.register("first-bn", help="γ and β of the first BatchNorm layer only")
    def first_bn(model: nn.Module, arg: None, ctx: SelectContext) -> dict[str, bool]:
        name, _ = layers.layers_of(model, layers.BATCHNORM_TYPES)[0]
        return {layers.qualified_name(name, "weight"): True, layers.qualified_name(name, "bias"): True}

    yield
    TERMS.unregister("first-bn")


def test_a_new_term_trains_end_to_end(tmp_path, first_bn_term):
    assert parse_spec("first-bn+output") == ["first-bn", "output"]
    assert "| `first-bn` | γ and β of the first BatchNorm layer only |" in term_table_markdown()
    summary, init, final = run(tmp_path, model="cifar_resnet_8_8", train="first-bn")
    assert summary["trainable_params"] == 2 * 8  # the stem's BN: width 8
    params = {n for n, _ in bnonly.create_model("cifar_resnet_8_8", 4, device="meta").named_parameters()}
    assert changed(init, final) & params == {"bn.weight", "bn.bias"}  # every other parameter bitwise frozen
    assert {k for k in changed(init, final) - params if not k.endswith("num_batches_tracked")} \
        == {k for k in final if k.endswith(("running_mean", "running_var"))}  # BN statistics still update


# ---------------------------------------------------------------- (c) a data format

@pytest.fixture
def toy_format():
    def has_toy_npz(path: str) -> bool:
        return (local_path(path) / "toy.npz").is_file()

    @DATA_FORMATS.register("toy-npz", detect=has_toy_npz, help="a folder holding toy.npz (uint8 NCHW images, labels)")
    def open_toy(path: str, options: OpenOptions) -> DatasetSource:
        arrays = np.load(local_path(path) / "toy.npz")
        classes = [str(c) for c in arrays["classes"]]
        train, test = (ArrayDataset(torch.from_numpy(arrays[f"{split}_images"]),
                                    torch.from_numpy(arrays[f"{split}_labels"]).long(), classes)
                       for split in ("train", "test"))
        return array_source("toy", train, test, path)

    yield
    DATA_FORMATS.unregister("toy-npz")


def test_a_new_data_format_trains_end_to_end(tmp_path, toy_format):
    rng = np.random.default_rng(0)
    folder = tmp_path / "toy"
    folder.mkdir()
    np.savez(folder / "toy.npz", classes=np.array(["ant", "bee", "cat"]),
             train_images=rng.integers(0, 256, (48, 3, 12, 12), dtype=np.uint8), train_labels=np.arange(48) % 3,
             test_images=rng.integers(0, 256, (24, 3, 12, 12), dtype=np.uint8), test_labels=np.arange(24) % 3)
    source = bnonly.open_dataset(str(folder))
    assert (source.name, source.classes, source.image_size, len(source.train)) == \
        ("toy", ["ant", "bee", "cat"], 12, 48)
    summary, _, final = run(tmp_path, model="cifar_resnet_8_8", train="bn", data=str(folder))
    assert final["fc.weight"].shape == (3, 32) and final["fc.bias"].shape == (3,)  # the data's 3 classes
    assert summary["status"] == "done" and 0 <= summary["test_acc"] <= 1
