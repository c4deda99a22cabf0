"""CIFAR VGG-11/13/16/19, as open_lth's ``cifar_vgg`` (same module names)."""

from __future__ import annotations

from torch import Tensor, nn

from bnonly.fused_norm import norm_act
from bnonly.models.registry import MODEL_FAMILIES, ModelNameError

PLANS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class ConvModule(nn.Module):
    """conv3x3 (with bias) -> BN -> ReLU."""

    def __init__(self, f_in: int, f_out: int):
        super().__init__()
        self.conv = nn.Conv2d(f_in, f_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(f_out)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return norm_act(self.bn, self.relu, self.conv(x))


class CifarVGG(nn.Module):
    """Four 2x2 max-pools take 32x32 to 2x2; the final 2x2 average pool leaves 1x1x512."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        f_in = 3
        for spec in PLANS[depth]:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(ConvModule(f_in, spec))
                f_in = spec
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(x)).flatten(1))


@MODEL_FAMILIES.register(
    "cifar_vgg",
    regex=r"cifar_vgg_(?P<depth>[1-9]\d*)",
    patterns="cifar_vgg_11|13|16|19",
    num_classes=10,
    input_shape=(3, 32, 32),
    help="CIFAR VGG with BatchNorm after every conv, as open_lth's",
    examples=["cifar_vgg_11", "cifar_vgg_16"],
)
def _build(depth: str, num_classes: int) -> CifarVGG:
    if int(depth) not in PLANS:
        raise ModelNameError(f"CIFAR VGG depth must be one of {', '.join(map(str, PLANS))}; got {depth}")
    return CifarVGG(int(depth), num_classes)
