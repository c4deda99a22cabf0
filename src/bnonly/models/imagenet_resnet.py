"""ImageNet ResNet-18/34/50/101/152/200 with torchvision's structure and module names.

``W`` is torchvision's ``width_per_group``: a bottleneck's inner width is ``planes * W / 64``
(``imagenet_resnet_50_128`` is ``wide_resnet50_2``). Torchvision has no wide basic-block ResNet;
here ``W`` scales every basic-block width, stem included (64 -> W), so W = 64 is the default.
"""

from __future__ import annotations

from torch import Tensor, nn

from bnonly.fused_norm import norm_act
from bnonly.models.registry import MODEL_FAMILIES, ModelNameError

DEFAULT_WIDTH = 64


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = norm_act(self.bn1, self.relu, self.conv1(x))
        return norm_act(self.bn2, self.relu, self.conv2(out), identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, as torchvision's ResNet v1.5) -> 1x1 x4."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, width: int):
        super().__init__()
        inner = int(planes * (width / 64.0))
        self.conv1 = nn.Conv2d(inplanes, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = norm_act(self.bn1, self.relu, self.conv1(x))
        out = norm_act(self.bn2, self.relu, self.conv2(out))
        return norm_act(self.bn3, self.relu, self.conv3(out), identity)


CONFIGS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
    200: (Bottleneck, (3, 24, 36, 3)),
}


class ImageNetResNet(nn.Module):
    def __init__(self, depth: int, width: int = DEFAULT_WIDTH, num_classes: int = 1000):
        super().__init__()
        if depth not in CONFIGS:
            raise ModelNameError(f"ImageNet ResNet depth must be one of {', '.join(map(str, CONFIGS))}; got {depth}")
        block, counts = CONFIGS[depth]
        base = width if block is BasicBlock else 64
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, base, counts[0], 1, width)
        self.layer2 = self._make_layer(block, 2 * base, counts[1], 2, width)
        self.layer3 = self._make_layer(block, 4 * base, counts[2], 2, width)
        self.layer4 = self._make_layer(block, 8 * base, counts[3], 2, width)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * base * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, blocks: int, stride: int, width: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(norm_act(self.bn1, self.relu, self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@MODEL_FAMILIES.register(
    "imagenet_resnet",
    regex=r"imagenet_resnet_(?P<depth>[1-9]\d*)(?:_(?P<width>[1-9]\d*))?",
    patterns=(
        "imagenet_resnet_18|34|50|101|152|200",
        "imagenet_resnet_D_W (W = width per group, default 64; 50_128 = wide_resnet50_2)",
    ),
    num_classes=1000,
    input_shape=(3, 224, 224),
    help="ImageNet ResNet with torchvision's structure and module names (v1.5: the 3x3 conv strides)",
    examples=["imagenet_resnet_18", "imagenet_resnet_50", "imagenet_resnet_50_128"],
)
def _build(depth: str, width: str | None, num_classes: int) -> ImageNetResNet:
    return ImageNetResNet(int(depth), DEFAULT_WIDTH if width is None else int(width), num_classes)
