"""Transformer blocks shared by every model family, and the original encoder-decoder Transformer on them.

Bottom-up: masks and positions → attention → MLP → encoder block → encoder
stack → decoder layer → decoder stack → the "Attention is all you need"
model (config dataclass beside it). Module names match the checkpoint
layout, so weights load by name.

Contracts shared by every module here:
- tensors are batch-first: (B, L, D);
- masks are boolean, True where a query may attend to a key, broadcastable
  to (B, H, Lq, Lk): ``causal_mask`` gives (L, L), ``padding_mask`` (B, 1, 1, L),
  and they combine with ``&``. (``torch.nn.MultiheadAttention`` reads its
  masks the other way round: True = ignore.) A query row with no key to
  attend to gives NaN, as in torch;
- blocks are pre-norm (``norm_first=True``: ViT, CLIP, GPT) or post-norm (the
  original Transformer, BERT, DETR); the LayerNorm epsilon and the MLP
  activation are parameters (open_clip: 1e-5 with QuickGELU; timm and
  torchvision: 1e-6 with GELU);
- positions given as ``pos``/``query_pos``/``key_pos`` are added to the
  inputs of the query and key projections only, never to the values (DETR);
- ``need_weights=True`` computes attention explicitly and returns its
  probabilities (B, H, Lq, Lk) (attention rollout); otherwise attention runs
  through the fused ``scaled_dot_product_attention``, which returns none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


# -- masks and positions -------------------------------------------------------------------------------------
def causal_mask(length: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean look-ahead mask, True where attention is allowed: (L, L), lower triangle."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """Key mask from ``valid`` (B, L), True for real tokens: (B, 1, 1, L), True where a key may be attended."""
    return valid.bool()[:, None, None, :]


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """The fixed position table of "Attention is all you need": (L, D).

    PE[p, 2i] = sin(p / 10000^(2i/D)), PE[p, 2i+1] = cos(p / 10000^(2i/D)).
    """
    position = torch.arange(length, dtype=torch.float64)[:, None]  # (L, 1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))  # (⌈D/2⌉,)
    angles = position * frequency  # (L, ⌈D/2⌉)
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, : width // 2]
    return table.float()


# -- activations ---------------------------------------------------------------------------------------------
def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU: x·σ(1.702x)."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # exact (erf)
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "relu": F.relu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


_activation_by_name = activation  # for modules whose ``activation`` argument shadows the function


# -- attention -----------------------------------------------------------------------------------------------
class MultiHeadAttention(nn.Module):
    """Multi-head attention with one fused QKV projection, for self- and cross-attention.

    ``x`` (B, Lq, D) gives the queries; keys and values come from ``memory``
    (B, Lk, D) when given (cross-attention, the same ``qkv`` weight sliced),
    from ``x`` otherwise. ``dropout`` applies to the attention probabilities.
    """

    def __init__(self, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def _project(self, x: torch.Tensor, memory: torch.Tensor | None, query_pos: torch.Tensor | None,
                 key_pos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (B, Lq, D), k and v (B, Lk, D); positions reach the query and key inputs only."""
        width = x.shape[-1]
        if memory is None and query_pos is None and key_pos is None:
            return self.qkv(x).split(width, dim=-1)  # one matmul for plain self-attention
        source = x if memory is None else memory
        w_q, w_k, w_v = self.qkv.weight.split(width)
        b_q, b_k, b_v = self.qkv.bias.split(width)
        q = F.linear(x if query_pos is None else x + query_pos, w_q, b_q)
        k = F.linear(source if key_pos is None else source + key_pos, w_k, b_k)
        v = F.linear(source, w_v, b_v)
        return q, k, v

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, *, memory: torch.Tensor | None = None,
                query_pos: torch.Tensor | None = None, key_pos: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, Lq, D), or ((B, Lq, D), attention probabilities (B, H, Lq, Lk)) when ``need_weights``."""
        batch, length, width = x.shape
        q, k, v = self._project(x, memory, query_pos, key_pos)
        # (B, L, D) -> (B, H, L, D/H)
        q, k, v = (t.view(batch, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
            if attn_mask is not None:
                scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                          else scores + attn_mask)
            weights = scores.softmax(dim=-1)
            y = F.dropout(weights, dropout, training=self.training) @ v  # (B, H, Lq, D/H)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        y = self.proj(y.transpose(1, 2).reshape(batch, length, width))  # (B, Lq, D)
        return (y, weights) if need_weights else y


class MLP(nn.Module):
    """Two linear layers with an activation between them: D → ratio·D → D, dropout after the second."""

    def __init__(self, width: int, mlp_ratio: float = 4.0, dropout: float = 0.0, activation: str = "gelu"):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.activation_name = activation
        self.act = _activation_by_name(activation)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation_name}"


# -- encoder -------------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Encoder block: self-attention and MLP, each a residual branch, pre- or post-norm.

    pre-norm:  x = x + drop(attn(ln_1(x))); x = x + mlp(ln_2(x))
    post-norm: x = ln_1(x + drop(attn(x))); x = ln_2(x + mlp(x))
    ``dropout`` is the residual dropout (the MLP's own ends its branch); ``attn_dropout`` the attention's.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, *,
                 attn_dropout: float = 0.0, norm_first: bool = True, eps: float = 1e-5, activation: str = "gelu"):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = MultiHeadAttention(width, heads, attn_dropout)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_ratio, dropout, activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, *, pos: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``pos`` (broadcastable to x) is added to the query and key inputs of the attention."""
        h = self.ln_1(x) if self.norm_first else x
        out = self.attn(h, attn_mask, query_pos=pos, key_pos=pos, need_weights=need_weights)
        attended, weights = out if need_weights else (out, None)
        if self.norm_first:
            x = x + self.drop(attended)
            x = x + self.mlp(self.ln_2(x))
        else:
            x = self.ln_1(x + self.drop(attended))
            x = self.ln_2(x + self.mlp(x))
        return (x, weights) if need_weights else x


class Encoder(nn.Module):
    """A stack of ``layers`` blocks sharing one mask and one position table (no final norm: the model adds it)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, *,
                 attn_dropout: float = 0.0, norm_first: bool = True, eps: float = 1e-5, activation: str = "gelu"):
        super().__init__()
        self.layers = nn.ModuleList(
            Block(width, heads, mlp_ratio, dropout, attn_dropout=attn_dropout, norm_first=norm_first, eps=eps,
                  activation=activation)
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, *, pos: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, L, D); with ``need_weights``, also the attention probabilities of every layer, first to last."""
        all_weights = []
        for layer in self.layers:
            if need_weights:
                x, weights = layer(x, attn_mask, pos=pos, need_weights=True)
                all_weights.append(weights)
            else:
                x = layer(x, attn_mask, pos=pos)
        return (x, all_weights) if need_weights else x


class Transformer(nn.Module):
    """Deprecated name of the encoder stack kept for ViT and CLIP until their weights migrate (``blocks``)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask)
        return x
