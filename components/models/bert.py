"""BERT: word + position + segment embeddings, a post-norm encoder, a tanh pooler, pretraining heads.

Data contract: ``input_ids`` (B, L) int64; ``token_type_ids`` (B, L) int64
segment ids (0 for sentence A, 1 for sentence B; zeros when omitted);
``attention_mask`` (B, L), 1 (or True) at real tokens and 0 at padding. The
pooled output is the tanh-projected final hidden state of the first token
([CLS]). The masked-LM decoder shares its weight with the word embeddings and
has a bias of its own; the next-sentence head reads the pooled output.

The layout is the original paper's (Devlin et al., 2018): LayerNorm after each
residual sum (post-norm), exact GELU, LayerNorm eps 1e-12, dropout on the
hidden states and on the attention probabilities. ``bert_hf.py`` maps weights
to and from the Hugging Face layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from components.models.transformer import Encoder, padding_mask


@dataclass
class BertConfig:
    vocab_size: int = 30522  # WordPiece vocabulary of the released English models
    hidden_size: int = 768  # width H of every hidden state
    layers: int = 12  # encoder blocks
    heads: int = 12  # attention heads; hidden_size must be a multiple
    intermediate_size: int = 3072  # MLP inner width, 4·H in every released size
    max_position: int = 512  # longest sequence the learned position table covers
    type_vocab_size: int = 2  # segments (sentence A / sentence B)
    dropout: float = 0.1  # on embeddings, attention output, MLP output, classifier input
    attn_dropout: float = 0.1  # on attention probabilities
    eps: float = 1e-12  # LayerNorm epsilon
    pad_id: int = 0  # padding token: its embedding row starts at zero and gets no gradient
    initializer_range: float = 0.02  # std of the normal initialisation of weights

    __pydantic_config__ = {"extra": "forbid"}  # read by pipeline configs; plain dict, no import

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads {self.heads}")

    @property
    def mlp_ratio(self) -> float:
        """The shared MLP's width ratio: its inner width is int(H · ratio), which this makes intermediate_size
        exactly for any pair of sizes (a plain quotient can land a hair below and lose a unit)."""
        return (self.intermediate_size + 0.5) / self.hidden_size


def _preset(layers: int, hidden: int, heads: int) -> dict:
    return {"layers": layers, "hidden_size": hidden, "heads": heads, "intermediate_size": 4 * hidden}


# The sizes of Google's released BERT models and miniatures (Turc et al., 2019); vocab_size is left to the task.
BERT_PRESETS: dict[str, dict] = {
    "tiny": _preset(2, 128, 2),
    "mini": _preset(4, 256, 4),
    "small": _preset(4, 512, 8),
    "medium": _preset(8, 512, 8),
    "base": _preset(12, 768, 12),
    "large": _preset(24, 1024, 16),
}


class BertEmbeddings(nn.Module):
    """Sum of word, position and segment embeddings, then LayerNorm and dropout: (B, L) → (B, L, H)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_id)
        self.pos_embed = nn.Embedding(cfg.max_position, cfg.hidden_size)
        self.type_embed = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.pos_embed.num_embeddings:
            raise ValueError(f"sequence of {length} tokens is longer than max_position {self.pos_embed.num_embeddings}")
        x = self.word_embed(input_ids) + self.pos_embed.weight[:length]  # (B, L, H)
        if token_type_ids is None:
            x = x + self.type_embed.weight[0]
        else:
            x = x + self.type_embed(token_type_ids)
        return self.dropout(self.ln(x))


class BertModel(nn.Module):
    """Embeddings, post-norm encoder and the [CLS] pooler."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = Encoder(cfg.hidden_size, cfg.layers, cfg.heads, cfg.mlp_ratio, cfg.dropout,
                               attn_dropout=cfg.attn_dropout, norm_first=False, eps=cfg.eps, activation="gelu")
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        init_bert_weights(self, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, output_attentions: bool = False):
        """(sequence_output (B, L, H), pooled (B, H)), plus per-layer attentions (B, heads, L, L) when asked."""
        x = self.embeddings(input_ids, token_type_ids)
        mask = None if attention_mask is None else padding_mask(attention_mask.bool())  # (B, 1, 1, L)
        attentions = None
        if output_attentions:
            x, attentions = self.encoder(x, mask, need_weights=True)
        else:
            x = self.encoder(x, mask)
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, H)
        return (x, pooled, list(attentions)) if output_attentions else (x, pooled)


class BertMLMHead(nn.Module):
    """Dense + GELU + LayerNorm, then the vocabulary projection with the word embeddings' weight and its own bias."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, hidden: torch.Tensor, word_weight: torch.Tensor) -> torch.Tensor:
        hidden = self.ln(F.gelu(self.dense(hidden)))  # (..., H)
        return F.linear(hidden, word_weight, self.bias)  # (..., V)


class BertPreTrainingOutput(NamedTuple):
    mlm_logits: torch.Tensor  # (B, L, V), or (N, V) at the masked positions when they were given
    nsp_logits: torch.Tensor  # (B, 2): index 0 "B follows A", 1 "B is random"
    attentions: list[torch.Tensor] | None  # per layer (B, heads, L, L) when asked for


class BertForPreTraining(nn.Module):
    """BERT with the masked-LM head (tied to the word embeddings) and the next-sentence head."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg)
        self.mlm = BertMLMHead(cfg)
        self.nsp = nn.Linear(cfg.hidden_size, 2)
        init_bert_weights(self.mlm, cfg.initializer_range)
        init_bert_weights(self.nsp, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, masked_positions: torch.Tensor | None = None,
                output_attentions: bool = False) -> BertPreTrainingOutput:
        """``masked_positions``: flat indices into B·L; the vocabulary projection then runs only there."""
        out = self.bert(input_ids, token_type_ids, attention_mask, output_attentions=output_attentions)
        sequence, pooled = out[0], out[1]
        if masked_positions is not None:
            sequence = sequence.reshape(-1, sequence.shape[-1])[masked_positions]  # (N, H)
        mlm_logits = self.mlm(sequence, self.bert.embeddings.word_embed.weight)
        return BertPreTrainingOutput(mlm_logits, self.nsp(pooled), out[2] if output_attentions else None)


class BertForSequenceClassification(nn.Module):
    """BERT with dropout and a linear classifier on the pooled [CLS] output: (B, L) → (B, num_labels)."""

    def __init__(self, cfg: BertConfig, num_labels: int, classifier_dropout: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg)
        self.dropout = nn.Dropout(cfg.dropout if classifier_dropout is None else classifier_dropout)
        self.classifier = nn.Linear(cfg.hidden_size, num_labels)
        init_bert_weights(self.classifier, cfg.initializer_range)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        return self.classifier(self.dropout(pooled))


@torch.no_grad()
def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation: weights ~ N(0, std), biases zero, LayerNorm ones/zeros, the padding row zero."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.weight.normal_(0.0, std)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.Embedding):
            m.weight.normal_(0.0, std)
            if m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()


def bert_config(preset: str = "base", **overrides) -> BertConfig:
    """A config from a named size with field overrides (``vocab_size=...``)."""
    if preset not in BERT_PRESETS:
        raise ValueError(f"unknown BERT preset {preset!r}; known: {', '.join(BERT_PRESETS)}")
    return BertConfig(**{**BERT_PRESETS[preset], **overrides})
