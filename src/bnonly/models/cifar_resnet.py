"""CIFAR ResNet-D (D = 6n+2) of width W, as open_lth's ``cifar_resnet`` (same module names), with any
normalizer.

A name suffix replaces every BatchNorm (stem, blocks, shortcuts) with another normalizer; the
unsuffixed names are the paper's BatchNorm ResNets, unchanged. Module names stay open_lth's
(``bn``, ``bn1``, ``bn2``) whatever the normalizer: layers are found by type, and state-dict keys
line up across normalizers.

- ``_gnG``: GroupNorm with G groups (Wu & He 2018); G divides W.
- ``_ln``: LayerNorm over channels, as GroupNorm(1, C) (Wu & He's definition of LN for conv nets):
  each image is normalized over (C, H, W) with a γ and β per channel, so it has BatchNorm's 2C
  affine parameters per layer. ``nn.LayerNorm([C, H, W])`` would have 2CHW, tied to one image size.
- ``_in``: InstanceNorm2d with affine γ/β (C per layer; per-image statistics in training and
  evaluation alike).
- ``_nonorm``: no normalizer. Each conv then has a bias (after a normalizer a conv bias is
  redundant, which is why the others have none), and each residual branch is multiplied by a
  scalar α = 1/sqrt(number of blocks) (SkipInit, De & Smith 2020, who show that a branch scale
  α <= 1/sqrt(depth) at initialization is what lets a normalizer-free residual net train; with α = 1
  Kaiming-initialized branches double the activations' variance at every block). α is a bare
  parameter (``blocks.i.scale``): ``all`` trains it, no other term does, so with frozen weights it
  stays 1/sqrt(blocks). Fixup (Zhang et al. 2019) was not chosen: it zeroes each branch's last
  conv, which frozen at random init would remove the branches for good.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from bnonly.fused_norm import norm_act
from bnonly.models.init import fill
from bnonly.models.registry import MODEL_FAMILIES, ModelNameError

DEFAULT_WIDTH = 16

NormLayer = Callable[[int], nn.Module]


class GroupNorm2d(nn.GroupNorm):
    """GroupNorm that runs PyTorch's CPU kernel on NCHW data, returning the input's memory format.

    PyTorch 2.13's CPU GroupNorm backward crashes (segfault) on a channels_last input that needs no
    gradient while γ/β do: the stem of a GroupNorm ResNet under ``norm``, whose input is a frozen
    conv of the images (``tests/test_families.py`` keeps a reproduction). Elsewhere it is GroupNorm.
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return super().forward(x.contiguous()).contiguous(memory_format=torch.channels_last)
        return super().forward(x)


class Block(nn.Module):
    """conv3x3-norm-ReLU-conv3x3-norm plus shortcut, then ReLU. Without a normalizer
    (``norm=None``) the convs have biases and the branch is scaled by ``scale``."""

    def __init__(self, f_in: int, f_out: int, downsample: bool, norm: NormLayer | None = nn.BatchNorm2d,
                 branch_scale: float = 1.0):
        super().__init__()
        stride = 2 if downsample else 1
        bias = norm is None
        norm = norm or (lambda channels: nn.Identity())
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = norm(f_out)
        self.relu = nn.ReLU()
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(f_in, f_out, 1, stride=2, bias=bias),
                norm(f_out),
            )
        else:
            self.shortcut = nn.Sequential()
        self.branch_scale = branch_scale
        self.scale = nn.Parameter(torch.empty(())) if bias else None

    def init_own_parameters(self, generator: torch.Generator) -> None:
        """The no-norm branch scale α (a constant: ``initialize`` draws nothing for it)."""
        fill(self.scale, lambda t: t.fill_(self.branch_scale))

    def forward(self, x: Tensor) -> Tensor:
        out = norm_act(self.bn1, self.relu, self.conv1(x))
        if self.scale is None:
            return norm_act(self.bn2, self.relu, self.conv2(out), self._shortcut(x))
        return self.relu(self.bn2(self.conv2(out)) * self.scale + self.shortcut(x))

    def _shortcut(self, x: Tensor) -> Tensor:
        """The shortcut; a projection's normalizer through ``norm_act`` without an activation, so
        that the fused path covers it too (the modules as written when it does not apply, or when
        a hook on the shortcut expects to see it run)."""
        if len(self.shortcut) != 2 or self.shortcut._forward_hooks or self.shortcut._forward_pre_hooks:
            return self.shortcut(x)
        conv, norm = self.shortcut
        return norm_act(norm, None, conv(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, width: int = DEFAULT_WIDTH, num_classes: int = 10,
                 norm: NormLayer | None = nn.BatchNorm2d):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ModelNameError(
                f"CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. 8, 14, 20, 32, 56, 110); got {depth}"
            )
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=norm is None)
        self.bn = nn.Identity() if norm is None else norm(width)
        self.relu = nn.ReLU()
        blocks, f_in = [], width
        for stage, f_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(Block(f_in, f_out, stage > 0 and i == 0, norm, branch_scale=1 / math.sqrt(3 * n)))
                f_in = f_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = norm_act(self.bn, self.relu, self.conv(x))
        out = self.pool(self.blocks(out)).flatten(1)
        return self.fc(out)


def normalizer(suffix: str | None, width: int) -> NormLayer | None:
    """The normalization layer a name suffix asks for (None: none at all)."""
    if suffix is None:
        return nn.BatchNorm2d
    if suffix == "nonorm":
        return None
    if suffix == "ln":
        return lambda channels: GroupNorm2d(1, channels)
    if suffix == "in":
        return lambda channels: nn.InstanceNorm2d(channels, affine=True)
    groups = int(suffix[2:])
    if width % groups:
        raise ModelNameError(f"GroupNorm groups must divide the width: {groups} groups do not divide width {width}")
    return lambda channels: GroupNorm2d(groups, channels)


@MODEL_FAMILIES.register(
    "cifar_resnet",
    regex=r"cifar_resnet_(?P<depth>[1-9]\d*)(?:_(?P<width>[1-9]\d*))?(?:_(?P<norm>gn[1-9]\d*|ln|in|nonorm))?",
    patterns=("cifar_resnet_D (D = 6n+2, e.g. 14, 20, 32, 56, 110, 866; width 16)", "cifar_resnet_D_W (width W)",
              "cifar_resnet_D[_W]_gnG|_ln|_in|_nonorm (GroupNorm with G groups | LayerNorm = GroupNorm(1, C) | "
              "InstanceNorm | no normalizer, with conv biases and a 1/sqrt(blocks) branch scale; unsuffixed: "
              "BatchNorm)"),
    num_classes=10,
    input_shape=(3, 32, 32),
    help="CIFAR ResNet of depth D and width W, as open_lth's (the paper's deep and wide families), "
         "with BatchNorm or another normalizer",
    examples=["cifar_resnet_8_8", "cifar_resnet_14", "cifar_resnet_20_32", "cifar_resnet_14_gn8",
              "cifar_resnet_14_32_ln", "cifar_resnet_8_8_gn4", "cifar_resnet_8_8_ln", "cifar_resnet_8_8_in",
              "cifar_resnet_8_8_nonorm"],
)
def _build(depth: str, width: str | None, norm: str | None, num_classes: int) -> CifarResNet:
    w = DEFAULT_WIDTH if width is None else int(width)
    return CifarResNet(int(depth), w, num_classes, normalizer(norm, w))
