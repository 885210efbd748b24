"""CLIP: a ViT image tower and a causal text transformer projected into one embedding space.

Data contract: ``images`` (B, 3, H, W) float, normalised; ``tokens`` (B, L)
int64, padded with ``pad_id`` after the end-of-text token. The text feature
is the final hidden state at the last non-pad position (the end-of-text
token), which under the look-ahead mask has seen the whole caption.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from components.models.transformer import Encoder, causal_mask
from components.models.vit import ViTConfig, VisionTransformer


@dataclass
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 77  # tokens per caption, including start and end tokens
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    pad_id: int = 0

    __pydantic_config__ = {"extra": "forbid"}


@dataclass
class CLIPConfig:
    embed_dim: int = 512  # width of the shared image-text space
    vision: ViTConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)  # clamp, as in the CLIP paper

    __pydantic_config__ = {"extra": "forbid"}


class TextTransformer(nn.Module):
    """Token and position embeddings, causal pre-norm blocks, final norm: (B, L) → (B, D)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.context_length, cfg.width) * 0.01)
        self.encoder = Encoder(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio)
        self.ln_final = nn.LayerNorm(cfg.width)
        self.register_buffer("attn_mask", causal_mask(cfg.context_length), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos_embed[:, :length]  # (B, L, D)
        x = self.ln_final(self.encoder(x, self.attn_mask[:length, :length]))
        eot = (tokens != self.cfg.pad_id).sum(dim=1).clamp(min=1) - 1  # (B,)
        return x[torch.arange(x.shape[0], device=x.device), eot]  # (B, D)


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision)
        self.text = TextTransformer(cfg.text)
        self.visual_proj = nn.Linear(cfg.vision.width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.text.width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings (B, E)."""
        return F.normalize(self.visual_proj(self.visual(images)), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings (B, E)."""
        return F.normalize(self.text_proj(self.text(tokens)), dim=-1)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image embeddings, text embeddings and the clamped, exponentiated logit scale."""
        scale = self.logit_scale.clamp(max=self.cfg.max_logit_scale).exp()
        return self.encode_image(images), self.encode_text(tokens), scale
