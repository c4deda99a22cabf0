"""A small Vision Transformer for 32x32 images (Dosovitskiy et al. 2021), timm's structure.

``vit_pP_dD_wW_hH``: patches of PxP (a Conv2d of kernel and stride P), D pre-norm blocks of width
W with H heads, MLP ratio 4 (GELU), a final norm, a linear head. A class token is pooled by
default; ``_gap`` drops it and averages the patch tokens instead. ``_bn`` replaces every
LayerNorm (the blocks' two and the final one) with BatchNorm1d over the token features, the
statistics taken over every token of every image in the batch (as in the work on BatchNorm in
ViTs, e.g. Yao et al. 2021); otherwise the same network.

Attention is built from ``nn.Linear`` layers (a fused ``qkv`` and the output ``proj``), so its
weights are conv/linear weights (``bnonly.layers.WEIGHT_TYPES``) that the weight distributions,
the random baselines and the ``bias`` term see, not an ``nn.MultiheadAttention`` whose in-projection
is a bare parameter.

Initialization: the family's default weight distribution is ``timm_vit`` (timm's
``init_weights_vit_timm``: Linear weights trunc_normal std 0.02, biases 0; the patch embedding
keeps PyTorch's default); ``weight_init=`` replaces it like any family's. The class token
(N(0, 1e-6), timm's) and the position embedding (trunc_normal std 0.02, timm's) are bare
parameters of the model, drawn by :meth:`VisionTransformer.init_own_parameters` whatever the
weight distribution; only ``all`` trains them. γ follows ``gamma_init`` as in every family (the
paper's U[0, 1] by default: the trained parameters start where they do in the BN-only study;
``gamma_init="ones"`` is timm's γ = 1), β = 0.

The blocks are the top-level ``nn.Sequential`` ``blocks``, so ``--checkpoint-activations`` works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnonly.models.init import fill
from bnonly.models.registry import MODEL_FAMILIES, ModelNameError

IMAGE_SIZE = 32
MLP_RATIO = 4


class TokenBatchNorm(nn.Module):
    """BatchNorm1d over the features of (batch, tokens, features) input: statistics per feature
    over every token of every image. The BatchNorm is a plain ``nn.BatchNorm1d`` child fed
    (batch x tokens, features), so ``convert_sync_batchnorm`` can swap it."""

    def __init__(self, features: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).view(x.shape)


class Attention(nn.Module):
    """Multi-head self-attention from a fused q/k/v ``nn.Linear`` and an output ``nn.Linear``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, width: int, heads: int, norm: type[nn.Module]):
        super().__init__()
        self.norm1 = norm(width)
        self.attn = Attention(width, heads)
        self.norm2 = norm(width)
        self.mlp = Mlp(width, MLP_RATIO * width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, patch: int, depth: int, width: int, heads: int, num_classes: int = 10,
                 norm: type[nn.Module] = nn.LayerNorm, class_token: bool = True):
        super().__init__()
        if IMAGE_SIZE % patch:
            raise ModelNameError(f"ViT patch size must divide the {IMAGE_SIZE}x{IMAGE_SIZE} image; got {patch}")
        if width % heads:
            raise ModelNameError(f"ViT width must be a multiple of the heads; got width {width}, {heads} heads")
        self.patch = patch
        self.grid = IMAGE_SIZE // patch
        self.patch_embed = nn.Conv2d(3, width, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.empty(1, 1, width)) if class_token else None
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid ** 2 + class_token, width))
        self.blocks = nn.Sequential(*[ViTBlock(width, heads, norm) for _ in range(depth)])
        self.norm = norm(width)
        self.head = nn.Linear(width, num_classes)

    def init_own_parameters(self, generator: torch.Generator) -> None:
        """timm's: position embedding trunc_normal(std 0.02), class token N(0, 1e-6)."""
        fill(self.pos_embed, lambda t: nn.init.trunc_normal_(t, 0.0, 0.02, -2.0, 2.0, generator=generator))
        fill(self.cls_token, lambda t: t.normal_(0.0, 1e-6, generator=generator))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise RuntimeError(f"this ViT takes {IMAGE_SIZE}x{IMAGE_SIZE} images ({self.grid}x{self.grid} patches of "
                               f"{self.patch}x{self.patch}, one position embedding each); got "
                               f"{x.shape[-2]}x{x.shape[-1]}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.norm(self.blocks(x + self.pos_embed))
        return self.head(x[:, 0] if self.cls_token is not None else x.mean(1))


@MODEL_FAMILIES.register(
    "vit",
    regex=r"vit_p(?P<patch>[1-9]\d*)_d(?P<depth>[1-9]\d*)_w(?P<width>[1-9]\d*)_h(?P<heads>[1-9]\d*)"
          r"(?:_(?P<norm>bn))?(?:_(?P<pool>gap))?",
    patterns=("vit_pP_dD_wW_hH (32x32 images: PxP patches, D blocks, width W, H heads; LayerNorm, class token)",
              "vit_pP_dD_wW_hH[_bn][_gap] (_bn: BatchNorm1d over token features for every LayerNorm; "
              "_gap: mean of the patch tokens, no class token)"),
    num_classes=10,
    input_shape=(3, IMAGE_SIZE, IMAGE_SIZE),
    weight_init="timm_vit",
    help="small pre-norm Vision Transformer for 32x32 images, timm's structure and init, LayerNorm or BatchNorm",
    examples=["vit_p4_d6_w192_h3", "vit_p4_d6_w192_h3_bn", "vit_p8_d1_w16_h2", "vit_p8_d1_w16_h2_bn_gap",
              "vit_p8_d2_w16_h2_gap"],
)
def _build(patch: str, depth: str, width: str, heads: str, norm: str | None, pool: str | None,
           num_classes: int) -> VisionTransformer:
    return VisionTransformer(int(patch), int(depth), int(width), int(heads), num_classes,
                             TokenBatchNorm if norm == "bn" else nn.LayerNorm, class_token=pool is None)
