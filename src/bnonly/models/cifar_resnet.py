"""CIFAR ResNet-D (D = 6n+2) of width W, as open_lth's ``cifar_resnet`` (same module names)."""

from __future__ import annotations

from torch import Tensor, nn

from bnonly.models.registry import MODEL_FAMILIES, ModelNameError

DEFAULT_WIDTH = 16


class Block(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU."""

    def __init__(self, f_in: int, f_out: int, downsample: bool):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.relu = nn.ReLU()
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, 1, stride=2, bias=False),
                nn.BatchNorm2d(f_out),
            )
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, width: int = DEFAULT_WIDTH, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ModelNameError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. 8, 14, 20, 32, 56, 110); got {depth}"
            )
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        blocks, f_in = [], width
        for stage, f_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(Block(f_in, f_out, downsample=stage > 0 and i == 0))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn(self.conv(x)))
        out = self.pool(self.blocks(out)).flatten(1)
        return self.fc(out)


@MODEL_FAMILIES.register(
    "cifar_resnet",
    regex=r"cifar_resnet_(?P<depth>[1-9]\d*)(?:_(?P<width>[1-9]\d*))?",
    patterns=("cifar_resnet_D (D = 6n+2, e.g. 14, 20, 32, 56, 110, 866; width 16)", "cifar_resnet_D_W (width W)"),
    num_classes=10,
    input_shape=(3, 32, 32),
    help="CIFAR ResNet of depth D and width W, as open_lth's (the paper's deep and wide families)",
    examples=["cifar_resnet_8_8", "cifar_resnet_14", "cifar_resnet_20_32"],
)
def _build(depth: str, width: str | None, num_classes: int) -> CifarResNet:
    return CifarResNet(int(depth), DEFAULT_WIDTH if width is None else int(width), num_classes)
