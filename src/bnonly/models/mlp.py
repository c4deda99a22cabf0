"""A multilayer perceptron on the flattened image: the simplest random-features case.

``mlp_D_W_bn`` / ``mlp_D_W_ln``: D linear layers in all (D >= 2, counted like ResNet-D and VGG-D,
the output layer included): D - 1 hidden blocks Linear(W) -> norm -> ReLU, then a linear head.
The norm is BatchNorm1d or LayerNorm(W). The hidden Linears have no bias: the norm's β that
follows is the bias (as in the ResNets, whose convs before a BatchNorm have none), so the
``bias`` term trains the head's bias only. The hidden blocks are the top-level
``nn.Sequential`` ``blocks`` (``--checkpoint-activations`` works). Weights: Kaiming normal, as the
paper's framework does every family.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from bnonly.models.registry import MODEL_FAMILIES, ModelNameError

INPUT_SHAPE = (3, 32, 32)
NORMS = {"bn": nn.BatchNorm1d, "ln": nn.LayerNorm}


class MLP(nn.Module):
    def __init__(self, depth: int, width: int, num_classes: int = 10, norm: type[nn.Module] = nn.BatchNorm1d,
                 input_shape: tuple[int, ...] = INPUT_SHAPE):
        super().__init__()
        if depth < 2:
            raise ModelNameError(f"MLP depth counts the linear layers, output layer included, so it is at least 2; "
                                 f"got {depth}")
        f_in = math.prod(input_shape)
        blocks = []
        for _ in range(depth - 1):
            blocks.append(nn.Sequential(nn.Linear(f_in, width, bias=False), norm(width), nn.ReLU()))
            f_in = width
        self.flatten = nn.Flatten()
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.blocks(self.flatten(x)))


@MODEL_FAMILIES.register(
    "mlp",
    regex=r"mlp_(?P<depth>[1-9]\d*)_(?P<width>[1-9]\d*)_(?P<norm>bn|ln)",
    patterns="mlp_D_W_bn|ln (D linear layers, head included, of width W; BatchNorm1d or LayerNorm)",
    num_classes=10,
    input_shape=INPUT_SHAPE,
    help="MLP on the flattened 3x32x32 image: Linear-norm-ReLU blocks and a linear head",
    examples=["mlp_4_512_bn", "mlp_4_512_ln", "mlp_3_16_bn", "mlp_3_16_ln"],
)
def _build(depth: str, width: str, norm: str, num_classes: int) -> MLP:
    return MLP(int(depth), int(width), num_classes, NORMS[norm])
