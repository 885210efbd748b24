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
- stochastic depth (``drop_path``, per block; ``drop_path_rate`` spread over an encoder's layers as DeiT
  and timm do) drops a whole sample's residual branch in training and scales the kept ones by 1/(1-p);
  at 0 (the default) it is absent and changes nothing;
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


# -- stochastic depth ----------------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): in training, a sample's residual branch is zeroed with probability
    ``p`` and kept ones are scaled by 1/(1-p), so its expectation is unchanged; in eval mode, the identity."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability {p} is not in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # (B, 1, ..., 1): whole samples
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, layers: int) -> list[float]:
    """Per-layer drop-path probabilities rising linearly from 0 at the first layer to ``rate`` at the last."""
    if layers == 1:
        return [0.0]
    return [rate * i / (layers - 1) for i in range(layers)]


# -- encoder -------------------------------------------------------------------------------------------------
class Block(nn.Module):
    """Encoder block: self-attention and MLP, each a residual branch, pre- or post-norm.

    pre-norm:  x = x + drop(attn(ln_1(x))); x = x + mlp(ln_2(x))
    post-norm: x = ln_1(x + drop(attn(x))); x = ln_2(x + mlp(x))
    ``dropout`` is the residual dropout (the MLP's own ends its branch); ``attn_dropout`` the attention's;
    ``drop_path`` the stochastic-depth probability of each branch (``drop_path`` wraps ``drop`` and ``mlp``:
    with it, x = x + drop_path(drop(attn(ln_1(x)))) and x = x + drop_path(mlp(ln_2(x)))).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, *,
                 attn_dropout: float = 0.0, norm_first: bool = True, eps: float = 1e-5, activation: str = "gelu",
                 drop_path: float = 0.0):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = MultiHeadAttention(width, heads, attn_dropout)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_ratio, dropout, activation)
        self.drop = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # no parameters either way

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, *, pos: torch.Tensor | None = None,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``pos`` (broadcastable to x) is added to the query and key inputs of the attention."""
        h = self.ln_1(x) if self.norm_first else x
        out = self.attn(h, attn_mask, query_pos=pos, key_pos=pos, need_weights=need_weights)
        attended, weights = out if need_weights else (out, None)
        if self.norm_first:
            x = x + self.drop_path(self.drop(attended))
            x = x + self.drop_path(self.mlp(self.ln_2(x)))
        else:
            x = self.ln_1(x + self.drop_path(self.drop(attended)))
            x = self.ln_2(x + self.drop_path(self.mlp(x)))
        return (x, weights) if need_weights else x


class Encoder(nn.Module):
    """A stack of ``layers`` blocks sharing one mask and one position table (no final norm: the model adds it).

    ``drop_path_rate`` is the stochastic depth of the last block; block i gets rate·i/(layers-1) (DeiT, timm).
    """

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, *,
                 attn_dropout: float = 0.0, norm_first: bool = True, eps: float = 1e-5, activation: str = "gelu",
                 drop_path_rate: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(
            Block(width, heads, mlp_ratio, dropout, attn_dropout=attn_dropout, norm_first=norm_first, eps=eps,
                  activation=activation, drop_path=p)
            for p in drop_path_rates(drop_path_rate, layers)
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


# -- decoder -------------------------------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    """Decoder layer: masked self-attention, cross-attention over the encoder's memory, MLP; pre- or post-norm.

    pre-norm:  x = x + drop(attn(ln_1(x))); x = x + drop(cross_attn(ln_2(x), memory)); x = x + mlp(ln_3(x))
    post-norm: x = ln_1(x + drop(attn(x))); x = ln_2(x + drop(cross_attn(x, memory))); x = ln_3(x + mlp(x))
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, *,
                 attn_dropout: float = 0.0, norm_first: bool = True, eps: float = 1e-5, activation: str = "gelu"):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = MultiHeadAttention(width, heads, attn_dropout)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.cross_attn = MultiHeadAttention(width, heads, attn_dropout)
        self.ln_3 = nn.LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_ratio, dropout, activation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, attn_mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, *, query_pos: torch.Tensor | None = None,
                memory_pos: torch.Tensor | None = None, need_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, Lq, D) attends to itself under ``attn_mask`` (look-ahead & padding), then to ``memory``
        (B, Lk, D) under ``memory_mask`` (the source's padding). ``query_pos`` is added to x's query and key
        inputs, ``memory_pos`` to the memory's key inputs (DETR). With ``need_weights``, also the self- and
        cross-attention probabilities."""
        h = self.ln_1(x) if self.norm_first else x
        out = self.attn(h, attn_mask, query_pos=query_pos, key_pos=query_pos, need_weights=need_weights)
        attended, self_weights = out if need_weights else (out, None)
        x = x + self.drop(attended) if self.norm_first else self.ln_1(x + self.drop(attended))

        h = self.ln_2(x) if self.norm_first else x
        out = self.cross_attn(h, memory_mask, memory=memory, query_pos=query_pos, key_pos=memory_pos,
                              need_weights=need_weights)
        attended, cross_weights = out if need_weights else (out, None)
        x = x + self.drop(attended) if self.norm_first else self.ln_2(x + self.drop(attended))

        x = x + self.mlp(self.ln_3(x)) if self.norm_first else self.ln_3(x + self.mlp(x))
        return (x, (self_weights, cross_weights)) if need_weights else x


class Decoder(nn.Module):
    """A stack of ``layers`` decoder layers over one memory (no final norm: the model adds it)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0, *,
                 attn_dropout: float = 0.0, norm_first: bool = True, eps: float = 1e-5, activation: str = "gelu"):
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(width, heads, mlp_ratio, dropout, attn_dropout=attn_dropout, norm_first=norm_first,
                         eps=eps, activation=activation)
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, memory: torch.Tensor, attn_mask: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, *, query_pos: torch.Tensor | None = None,
                memory_pos: torch.Tensor | None = None, need_weights: bool = False, return_all: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """x (B, Lq, D); with ``return_all``, every layer's output instead, stacked first to last: (layers, B, Lq, D)
        (DETR's auxiliary losses); with ``need_weights``, also (self, cross) attention probabilities per layer."""
        all_weights, outputs = [], []
        for layer in self.layers:
            out = layer(x, memory, attn_mask, memory_mask, query_pos=query_pos, memory_pos=memory_pos,
                        need_weights=need_weights)
            if need_weights:
                x, weights = out
                all_weights.append(weights)
            else:
                x = out
            outputs.append(x)
        if return_all:
            x = torch.stack(outputs)
        return (x, all_weights) if need_weights else x


# -- the original Transformer --------------------------------------------------------------------------------
@dataclass
class TransformerConfig:
    """The encoder-decoder of Vaswani et al. (2017); defaults are the paper's base model (see PRESETS)."""

    src_vocab_size: int = 37000  # source token ids
    tgt_vocab_size: int = 37000  # target token ids (the output classes)
    width: int = 512  # d_model
    encoder_layers: int = 6
    decoder_layers: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0  # d_ff = mlp_ratio · d_model (2048 in the base model)
    dropout: float = 0.1  # P_drop: residual branches and the embeddings' sum with positions
    attn_dropout: float = 0.0  # on attention probabilities (the paper has none)
    norm_first: bool = False  # the paper's post-norm; True adds a final LayerNorm to each stack
    eps: float = 1e-5  # LayerNorm epsilon
    activation: str = "relu"  # MLP activation: gelu, gelu_tanh, quick_gelu, relu
    max_length: int = 1024  # longest source or target sequence (the position table's length)
    pad_id: int = 0  # padding id in sources and targets: masked as keys
    # One table for source, target and output projection (section 3.4; needs one shared vocabulary).
    share_embeddings: bool = True

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(f"share_embeddings needs one vocabulary, but src_vocab_size is {self.src_vocab_size} "
                             f"and tgt_vocab_size {self.tgt_vocab_size}")
        _activation_by_name(self.activation)


# The paper's Table 3 sizes; any other field may be given beside a preset.
PRESETS: dict[str, dict] = {
    "base": dict(width=512, encoder_layers=6, decoder_layers=6, heads=8, mlp_ratio=4.0, dropout=0.1),
    "big": dict(width=1024, encoder_layers=6, decoder_layers=6, heads=16, mlp_ratio=4.0, dropout=0.3),
}


def transformer_config(preset: str = "base", **overrides) -> TransformerConfig:
    """A config from a named preset (``base``, ``big``) with fields overridden."""
    if preset not in PRESETS:
        raise ValueError(f"unknown Transformer preset {preset!r}; known: {', '.join(PRESETS)}")
    return TransformerConfig(**{**PRESETS[preset], **overrides})


class Transformer(nn.Module):
    """Sequence-to-sequence model: source tokens (B, Ls) and target tokens (B, Lt) in, logits (B, Lt, V) out.

    Token embeddings are scaled by sqrt(d_model) and summed with sinusoidal
    positions; the decoder sees the target shifted right by the caller (it
    starts with a begin token) under a look-ahead mask. Keys equal to
    ``pad_id`` are masked unless explicit ``src_valid``/``tgt_valid`` are given.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        stack = dict(mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, attn_dropout=cfg.attn_dropout,
                     norm_first=cfg.norm_first, eps=cfg.eps, activation=cfg.activation)
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.width)
        self.tgt_embed = None if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab_size, cfg.width)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_length, cfg.width), persistent=False)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.encoder = Encoder(cfg.width, cfg.encoder_layers, cfg.heads, **stack)
        self.decoder = Decoder(cfg.width, cfg.decoder_layers, cfg.heads, **stack)
        self.encoder_norm = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(cfg.width, eps=cfg.eps) if cfg.norm_first else nn.Identity()
        self.output = None if cfg.share_embeddings else nn.Linear(cfg.width, cfg.tgt_vocab_size, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform matrices (as torch.nn.Transformer); embeddings N(0, d^-1/2), so scaled they are ~unit."""
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, std=self.cfg.width**-0.5)
            elif p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _embed(self, tokens: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.cfg.max_length:
            raise ValueError(f"sequence of {length} tokens is longer than max_length {self.cfg.max_length}")
        x = table(tokens) * math.sqrt(self.cfg.width) + self.positions[:length]  # (B, L, D)
        return self.embed_drop(x)

    def encode(self, src: torch.Tensor, src_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Memory (B, Ls, D) of source tokens (B, Ls)."""
        valid = src != self.cfg.pad_id if src_valid is None else src_valid
        return self.encoder_norm(self.encoder(self._embed(src, self.src_embed), padding_mask(valid)))

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_valid: torch.Tensor,
               tgt_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, Lt, V) for every target position, each seeing the targets up to itself and the memory."""
        valid = tgt != self.cfg.pad_id if tgt_valid is None else tgt_valid
        look_ahead = causal_mask(tgt.shape[1], tgt.device) & padding_mask(valid)  # (B, 1, Lt, Lt)
        x = self._embed(tgt, self.src_embed if self.tgt_embed is None else self.tgt_embed)
        x = self.decoder_norm(self.decoder(x, memory, look_ahead, padding_mask(src_valid)))
        return F.linear(x, self.src_embed.weight) if self.output is None else self.output(x)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_valid: torch.Tensor | None = None,
                tgt_valid: torch.Tensor | None = None) -> torch.Tensor:
        src_valid = src != self.cfg.pad_id if src_valid is None else src_valid
        return self.decode(tgt, self.encode(src, src_valid), src_valid, tgt_valid)

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, length: int,
                      src_valid: torch.Tensor | None = None) -> torch.Tensor:
        """The most likely next token, ``length`` times, after ``bos_id``: (B, length), the begin token left off."""
        src_valid = src != self.cfg.pad_id if src_valid is None else src_valid
        memory = self.encode(src, src_valid)
        out = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        for _ in range(length):
            logits = self.decode(out, memory, src_valid, torch.ones_like(out, dtype=torch.bool))
            out = torch.cat([out, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
        return out[:, 1:]
