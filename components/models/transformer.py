"""Transformer blocks shared by every model: attention, MLP, pre-norm residual block, stack.

Layout follows the usual pre-norm design (LayerNorm → attention → residual,
LayerNorm → MLP → residual) that ViT, CLIP and GPT-style text towers use.
Module names match the checkpoint layout, so weights load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean look-ahead mask, True where attention is allowed: (L, L), lower triangle."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


class MultiHeadAttention(nn.Module):
    """Self-attention with a fused QKV projection.

    Input (B, L, D); ``attn_mask`` is a boolean (L, L) or (B, 1, L, L) tensor,
    True where a query may attend to a key.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        # (B, L, D) -> (B, H, L, D/H)
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(batch, length, width)  # (B, L, D)
        return self.proj(y)


class MLP(nn.Module):
    """Two linear layers with GELU between them: D → ratio·D → D."""

    def __init__(self, width: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = MultiHeadAttention(width, heads, dropout)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of ``layers`` blocks sharing one attention mask."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask)
        return x
