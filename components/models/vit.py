"""Vision Transformer (Dosovitskiy et al., 2020): patch embeddings, class token, learned positions, pre-norm blocks.

Data contract: ``images`` (B, 3, S, S) float, normalised, S = ``cfg.image_size``.
``VisionTransformer(cfg)(images)`` gives the class token after the final
LayerNorm, (B, D), when ``cfg.num_classes`` is 0 (the tower alone: CLIP's
image tower, feature extraction), and the logits ``head(that)`` (B, C) when it
is C > 0 (the image classifier). With ``output_attentions=True`` it also gives
every layer's attention probabilities (B, heads, T, T), first layer first, over
T = 1 + N tokens (class token first; N = (S / patch)² patches in row-major
order), for attention rollout.

Two ways to make the N tokens (``cfg.backbone``):
- ``"patches"``: non-overlapping patch × patch pixel squares projected to D by
  one strided convolution (``patch_embed.proj``);
- ``"resnet50"``: the hybrid of the paper (R50+ViT-B/16): torchvision's
  ResNet-50 stem and stages 1–3 (stride 16, 1024 channels) as
  ``patch_embed.backbone``, then ``patch_embed.proj`` over (patch/16)² cells of
  that map (1×1 for patch 16). Its names are torchvision's ``resnet50`` ones, so
  ``vit_layouts.hybrid_backbone_from_torchvision`` loads ImageNet ResNet weights.

CLIP's image tower (Radford et al., 2021) differs in two options, both off by
default: ``ln_pre`` normalises the tokens (class token and positions added)
before the first block, and ``patch_bias=False`` leaves the patch projection
without its bias (the LayerNorm after it makes one redundant); with them and
``eps`` 1e-5, ``activation`` quick_gelu it computes OpenAI's and open_clip's
``VisionTransformer`` up to its output projection (which CLIP holds).

Parameter names (the checkpoint layout; CLIP's image tower keeps them under
``visual.``): ``patch_embed.proj.*``, ``cls_token`` (1, 1, D), ``pos_embed``
(1, 1 + N, D), ``ln_pre.*`` (with ``ln_pre`` only), ``encoder.layers.i.{ln_1,
attn.qkv, attn.proj, ln_2, mlp.fc1, mlp.fc2}.*``, ``ln_post.*``, ``head.*``
(classifiers only). ``vit_layouts.py``
maps them to and from timm's and torchvision's layouts; ``layer_index`` gives
each parameter's depth for layer-wise learning-rate decay.

Positions learned at one resolution serve another through
``resample_positions`` (bicubic with antialiasing, as timm's
``resample_abs_pos_embed``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from components.models.transformer import Encoder, activation as _activation

BACKBONE_STRIDE = 16  # pixels per cell of the ResNet-50 stage-3 map the hybrid reads
BACKBONE_CHANNELS = 1024  # channels of that map


@dataclass
class ViTConfig:
    image_size: int = 224  # input side in pixels; square images
    patch_size: int = 16  # pixel side of one token; image_size must be a multiple (and 16's for "resnet50")
    width: int = 768  # embedding width D
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0  # MLP inner width int(D · ratio)
    dropout: float = 0.0  # residual dropout: after the attention's projection and after the MLP
    attn_dropout: float = 0.0  # on attention probabilities
    drop_path_rate: float = 0.0  # stochastic depth of the last block; block i gets rate·i/(layers-1)
    eps: float = 1e-5  # LayerNorm epsilon: 1e-5 is open_clip's (CLIP's tower); the paper, timm, torchvision: 1e-6
    activation: str = "gelu"  # MLP activation: gelu (exact), gelu_tanh, quick_gelu, relu
    num_classes: int = 0  # classifier outputs; 0 = no head, the model returns the pooled class token (B, D)
    backbone: Literal["patches", "resnet50"] = "patches"  # what makes the tokens (see the module docstring)
    ln_pre: bool = False  # a LayerNorm over the tokens before the first block (CLIP's; timm's pre_norm)
    patch_bias: bool = True  # a bias in the patch projection (CLIP's has none)

    __pydantic_config__ = {"extra": "forbid"}  # read by pipeline configs; plain dict, no import

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.backbone not in ("patches", "resnet50"):
            raise ValueError(f"backbone {self.backbone!r} is not one of 'patches', 'resnet50'")
        if self.backbone == "resnet50" and self.patch_size % BACKBONE_STRIDE:
            raise ValueError(f"the resnet50 backbone has stride {BACKBONE_STRIDE}: patch_size {self.patch_size} "
                             f"must be a multiple of it")
        if self.num_classes < 0:
            raise ValueError(f"num_classes {self.num_classes} is negative")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate {self.drop_path_rate} is not in [0, 1)")
        _activation(self.activation)

    @property
    def grid(self) -> int:
        """Tokens per side: image_size / patch_size."""
        return self.image_size // self.patch_size


# Sizes of the paper's Table 1 (and DeiT's Ti, S): width, layers, heads; the MLP is 4·width in each.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}

# "SIZE/PATCH" for every size with patches of 32, 16 and 14 pixels at 224 (eps 1e-6, the paper's and timm's),
# the hybrid "R50+B/16", and "tiny" (32-pixel images in 4-pixel patches) for small data such as digits.
# Any field may be overridden through ``vit_config``; none sets num_classes (0: the tower alone).
VIT_PRESETS: dict[str, dict] = {
    **{f"{size}/{patch}": dict(patch_size=patch, width=w, layers=n, heads=h, eps=1e-6)
       for size, (w, n, h) in VIT_SIZES.items() for patch in (32, 16, 14)},
    "R50+B/16": dict(patch_size=16, width=768, layers=12, heads=12, eps=1e-6, backbone="resnet50"),
    "tiny": dict(image_size=32, patch_size=4, width=64, layers=4, heads=4, eps=1e-6),
}


def vit_config(preset: str = "B/16", **overrides) -> ViTConfig:
    """A config from a named preset (``"B/16"``, ``"L/16"``, ``"H/14"``, ``"tiny"``, ...) with fields overridden."""
    if preset not in VIT_PRESETS:
        raise ValueError(f"unknown ViT preset {preset!r}; known: {', '.join(VIT_PRESETS)}")
    return ViTConfig(**{**VIT_PRESETS[preset], **overrides})


# -- tokens from pixels --------------------------------------------------------------------------------------
class PatchEmbedding(nn.Module):
    """Non-overlapping patches projected to D: (B, 3, H, W) → (B, N, D), row-major."""

    def __init__(self, patch_size: int, width: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class ResNetStages(nn.Module):
    """torchvision's ResNet-50 stem and stages 1–3, under its own names: (B, 3, H, W) → (B, 1024, H/16, W/16)."""

    def __init__(self):
        super().__init__()
        from torchvision.models import resnet50  # only the hybrid needs torchvision

        net = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3 = net.layer1, net.layer2, net.layer3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))  # (B, 64, H/4, W/4)
        return self.layer3(self.layer2(self.layer1(x)))  # (B, 1024, H/16, W/16)


class ResNetPatchEmbedding(nn.Module):
    """The hybrid's tokens: ResNet-50 features (stride 16), then (patch/16)² cells projected to D: (B, N, D)."""

    def __init__(self, patch_size: int, width: int, bias: bool = True):
        super().__init__()
        cells = patch_size // BACKBONE_STRIDE
        self.backbone = ResNetStages()
        self.proj = nn.Conv2d(BACKBONE_CHANNELS, width, kernel_size=cells, stride=cells, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(images)).flatten(2).transpose(1, 2)


# -- the model -----------------------------------------------------------------------------------------------
class VisionTransformer(nn.Module):
    """Images (B, 3, S, S) → class-token features (B, D) (``num_classes`` 0) or logits (B, C)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        embedding = PatchEmbedding if cfg.backbone == "patches" else ResNetPatchEmbedding
        self.patch_embed = embedding(cfg.patch_size, cfg.width, bias=cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.grid**2 + 1, cfg.width) * 0.02)
        self.ln_pre = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.ln_pre else nn.Identity()  # no names without it
        self.encoder = Encoder(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.dropout,
                               attn_dropout=cfg.attn_dropout, eps=cfg.eps, activation=cfg.activation,
                               drop_path_rate=cfg.drop_path_rate)
        self.ln_post = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.head = nn.Linear(cfg.width, cfg.num_classes) if cfg.num_classes else nn.Identity()
        if cfg.num_classes:  # timm's initialisation of the classifier; the tower keeps torch's defaults
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward_tokens(self, images: torch.Tensor, *, output_attentions: bool = False
                       ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """All tokens after the final norm: (B, 1 + N, D), class token first; with ``output_attentions``,
        also the attention probabilities of every layer, (B, heads, 1 + N, 1 + N) each, first to last."""
        x = self.patch_embed(images)  # (B, N, D)
        if x.shape[1] + 1 != self.pos_embed.shape[1]:
            raise ValueError(f"images of {tuple(images.shape[-2:])} pixels make {x.shape[1]} tokens, but the model "
                             f"was built for {self.cfg.image_size}² ({self.pos_embed.shape[1] - 1} tokens): build it "
                             f"for the new size and fit the table with resample_positions")
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, 1 + N, D)
        if output_attentions:
            x, attentions = self.encoder(x, need_weights=True)
            return self.ln_post(x), attentions
        return self.ln_post(self.encoder(x))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled representation, the class token after the final norm: (B, D), whatever the head."""
        return self.forward_tokens(images)[:, 0]

    def forward(self, images: torch.Tensor, *, output_attentions: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C) logits, or (B, D) features without a head; with ``output_attentions``, (that, attentions)."""
        out = self.forward_tokens(images, output_attentions=output_attentions)
        tokens, attentions = out if output_attentions else (out, None)
        y = self.head(tokens[:, 0])
        return (y, attentions) if output_attentions else y


def layer_index(name: str, layers: int) -> int:
    """Depth of a parameter for layer-wise learning-rate decay (BEiT, MAE): the embeddings (``patch_embed.*``,
    ``cls_token``, ``pos_embed``, ``ln_pre``) are 0, ``encoder.layers.i.*`` is i + 1, the final norm and the head are
    ``layers`` + 1. ``name`` may carry a prefix (``visual.``, a wrapper's ``module.``)."""
    match = re.search(r"(?:^|\.)encoder\.layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if re.search(r"(?:^|\.)(patch_embed\.|cls_token$|pos_embed$|ln_pre\.)", name):
        return 0
    return layers + 1


# -- positions at another resolution -------------------------------------------------------------------------
def resample_positions(table: torch.Tensor, new_grid: int | tuple[int, int], num_prefix_tokens: int = 1,
                       old_grid: tuple[int, int] | None = None, *, mode: str = "bicubic",
                       antialias: bool = True) -> torch.Tensor:
    """A position table (1, P + h·w, D) fitted to a ``new_grid`` of tokens: (1, P + H·W, D).

    The first ``num_prefix_tokens`` rows (the class token's) are kept; the
    rest, a row-major ``old_grid`` (square when not given), is interpolated as
    an image of D channels, in float32, and returned in the table's dtype.
    Equal to timm's ``resample_abs_pos_embed`` with its defaults (bicubic,
    antialias on, corners not aligned).
    """
    if table.dim() != 3 or table.shape[0] != 1:
        raise ValueError(f"position table of shape {tuple(table.shape)}; expected (1, tokens, width)")
    new_h, new_w = (new_grid, new_grid) if isinstance(new_grid, int) else new_grid
    tokens = table.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(f"{tokens} position rows after {num_prefix_tokens} prefix row(s) are not a square "
                             f"grid: give old_grid")
        old_grid = (side, side)
    old_h, old_w = old_grid
    if old_h * old_w != tokens:
        raise ValueError(f"old_grid {old_grid} has {old_h * old_w} cells but the table has {tokens} grid rows")
    if (old_h, old_w) == (new_h, new_w):
        return table
    prefix, grid = table[:, :num_prefix_tokens], table[:, num_prefix_tokens:]
    width = table.shape[-1]
    image = grid.float().reshape(1, old_h, old_w, width).permute(0, 3, 1, 2)  # (1, D, h, w)
    image = F.interpolate(image, size=(new_h, new_w), mode=mode, antialias=antialias)  # corners not aligned
    grid = image.permute(0, 2, 3, 1).reshape(1, new_h * new_w, width).to(table.dtype)  # (1, H·W, D)
    return torch.cat([prefix, grid], dim=1)
