"""Vision Transformer encoder: patch embeddings, class token, learned positions, pre-norm blocks.

``VisionTransformer`` maps images (B, 3, H, W) to pooled features (B, width),
the class token after the final LayerNorm. Heads (a classifier, CLIP's
projection) sit on top in the model that uses the tower.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from components.models.transformer import Encoder


@dataclass
class ViTConfig:
    image_size: int = 224  # input side in pixels; square images
    patch_size: int = 16  # side of one patch; image_size must be a multiple
    width: int = 768  # embedding width D
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    __pydantic_config__ = {"extra": "forbid"}  # read by pipeline configs; plain dict, no import

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


class PatchEmbedding(nn.Module):
    """Non-overlapping patches projected to D: (B, 3, H, W) → (B, N, D)."""

    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = PatchEmbedding(cfg.patch_size, cfg.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, cfg.width) * 0.02)
        self.encoder = Encoder(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.ln_post = nn.LayerNorm(cfg.width)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: (B, 1 + N, D), class token first."""
        x = self.patch_embed(images)  # (B, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # (B, 1 + N, D)
        return self.ln_post(self.encoder(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(images)[:, 0]  # (B, D)
