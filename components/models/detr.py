"""DETR (Carion et al., 2020): a CNN backbone, a Transformer encoder-decoder over its feature map, and a fixed set
of learned object queries, each read out as a class (or "no object") and a box.

Data contract
- in: ``images`` (B, 3, H, W) float, normalised (ImageNet mean and std for
  ResNets); images of different sizes share one batch padded at the bottom and
  right, with ``mask`` (B, H, W) bool True at padded pixels (None: no padding);
- out: a dict
  - ``logits`` (B, Q, C + 1): class scores of each query, the last column "no object";
  - ``boxes`` (B, Q, 4): sigmoid (cx, cy, w, h), relative to each image's own
    unpadded size (the frame its targets are normalised in; DETR's and HF's);
  - ``aux``: [{"logits", "boxes"}] for every earlier decoder layer, first layer
    first, read by the same heads after the decoder's final LayerNorm (empty
    when ``cfg.aux_loss`` is off), for the auxiliary losses;
  - with ``output_attentions=True``, also ``cross_attentions``: each decoder
    layer's attention of every query over the feature map, (B, heads, Q, h, w)
    (the last one is what DETR's figures show), ``encoder_attentions`` (B, heads,
    h·w, h·w) and ``decoder_attentions`` (B, heads, Q, Q) per layer, and
    ``feature_mask`` (B, h, w), True at padded cells.

Shapes inside: the backbone gives (B, C, h, w) (h = H/32, or /16); a 1×1
convolution projects it to d_model; positions (2-D sine, d_model/2 per axis,
see ``position_encoding.py``) are added to the queries and keys, never the
values, of every attention that reads the feature map, and the object
queries' learned positions to the decoder's queries and self-attention keys;
padded cells are masked as keys. The decoder starts from zeros. Blocks are the
shared ones of ``transformer.py``, post-norm as in the paper.

Parameter names (the checkpoint layout): ``backbone.*`` (torchvision's ResNet
names, or the tiny CNN's), ``input_proj``, ``query_embed``,
``encoder.layers.i.{attn.qkv, attn.proj, ln_1, mlp.fc1, mlp.fc2, ln_2}``,
``decoder.layers.i.{attn, ln_1, cross_attn, ln_2, mlp, ln_3}``,
``decoder_norm``, ``class_embed``, ``bbox_embed.layers.{0,1,2}``;
``detr_hf.py`` maps them to and from ``transformers.DetrForObjectDetection``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from components.models.detr_backbone import build_backbone
from components.models.position_encoding import build_position_encoding
from components.models.transformer import Decoder, Encoder, activation as _activation, padding_mask

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "tiny")


@dataclass
class DetrConfig:
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101", "tiny"] = "resnet50"  # see detr_backbone.py
    frozen_batch_norm: bool = True  # ResNets: FrozenBatchNorm2d (fixed statistics and affine) instead of BatchNorm2d
    dilation: bool = False  # ResNet-50/101: the last stage dilated instead of strided (DC5: stride 16, not 32)
    # Backbone stages left trainable, counted from the last (torchvision's meaning): ResNets have 5 (stem,
    # layer1-4), the tiny CNN 4 (stem, layer1-3); DETR trains layer2-4 (3); 0 freezes the whole backbone.
    trainable_backbone_layers: int = 3
    tiny_width: int = 32  # channels of the tiny CNN's stem (its stages: w, 2w, 4w); ignored by ResNets
    d_model: int = 256  # width of the Transformer and of the object queries
    heads: int = 8  # attention heads; d_model must be a multiple
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 2048  # inner width of every Transformer MLP
    dropout: float = 0.1  # residual dropout in the encoder and decoder (after attention and after the MLP)
    attn_dropout: float = 0.1  # on attention probabilities (the paper's 0.1; HF's ports use 0)
    activation: str = "relu"  # MLP activation: relu (the paper's), gelu, gelu_tanh, quick_gelu
    eps: float = 1e-5  # LayerNorm epsilon
    norm_first: bool = False  # post-norm (the paper's); True: pre-norm blocks and a final encoder LayerNorm
    num_queries: int = 100  # object queries: the most objects one image can yield
    num_classes: int = 91  # object classes, class ids in [0, num_classes) (COCO: 91, its largest id + 1);
    #                        the logits have one more column, "no object"
    aux_loss: bool = True  # also read out every earlier decoder layer (``aux``) for the auxiliary losses

    __pydantic_config__ = {"extra": "forbid"}  # read by pipeline configs; plain dict, no import

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} is not one of {', '.join(BACKBONES)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if self.d_model % 4:
            raise ValueError(f"d_model {self.d_model} is not a multiple of 4 (the 2-D sine positions need it)")
        if self.dilation and self.backbone not in ("resnet50", "resnet101"):
            raise ValueError(f"dilation needs a bottleneck ResNet (resnet50, resnet101), not {self.backbone!r}")
        stages = 4 if self.backbone == "tiny" else 5
        if not 0 <= self.trainable_backbone_layers <= stages:
            raise ValueError(f"trainable_backbone_layers {self.trainable_backbone_layers} is not in [0, {stages}] "
                             f"for backbone {self.backbone!r}")
        for name in ("encoder_layers", "decoder_layers", "num_queries", "num_classes", "ffn_dim", "tiny_width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} {getattr(self, name)} is not positive")
        _activation(self.activation)

    @property
    def mlp_ratio(self) -> float:
        """The shared MLP's width ratio; its inner width int(d_model · ratio) is exactly ffn_dim."""
        return (self.ffn_dim + 0.5) / self.d_model


# The paper's models (Table 1: R50, R101, and their DC5 variants) and "tiny", a CPU-sized one for images of
# 64-96 pixels (a 16-pixel grid: 4×4 to 6×6 cells). None sets num_classes: the task does.
DETR_PRESETS: dict[str, dict] = {
    "r50": dict(backbone="resnet50"),
    "r101": dict(backbone="resnet101"),
    "r50-dc5": dict(backbone="resnet50", dilation=True),
    "r101-dc5": dict(backbone="resnet101", dilation=True),
    "tiny": dict(backbone="tiny", tiny_width=32, trainable_backbone_layers=4, d_model=64, heads=4,
                 encoder_layers=2, decoder_layers=2, ffn_dim=256, dropout=0.0, attn_dropout=0.0, num_queries=16),
}


def detr_config(preset: str = "r50", **overrides) -> DetrConfig:
    """A config from a named preset (``r50``, ``r101``, ``r50-dc5``, ``r101-dc5``, ``tiny``) with fields overridden."""
    if preset not in DETR_PRESETS:
        raise ValueError(f"unknown DETR preset {preset!r}; known: {', '.join(DETR_PRESETS)}")
    return DetrConfig(**{**DETR_PRESETS[preset], **overrides})


class BoxHead(nn.Module):
    """A ReLU MLP of ``layers`` linear layers, D → D → … → 4 (DETR's 3-layer box regressor; sigmoid outside)."""

    def __init__(self, width: int, out: int = 4, layers: int = 3):
        super().__init__()
        sizes = [width] * layers + [out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DETR(nn.Module):
    """Images (B, 3, H, W) and padding (B, H, W) → per-query class logits and boxes (see the module docstring)."""

    def __init__(self, cfg: DetrConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.backbone = build_backbone(cfg)
        self.input_proj = nn.Conv2d(self.backbone.num_channels, d, kernel_size=1)
        self.position = build_position_encoding(d)  # no parameters
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        stack = dict(attn_dropout=cfg.attn_dropout, norm_first=cfg.norm_first, eps=cfg.eps,
                     activation=cfg.activation)
        self.encoder = Encoder(d, cfg.encoder_layers, cfg.heads, cfg.mlp_ratio, cfg.dropout, **stack)
        self.encoder_norm = nn.LayerNorm(d, eps=cfg.eps) if cfg.norm_first else nn.Identity()
        self.decoder = Decoder(d, cfg.decoder_layers, cfg.heads, cfg.mlp_ratio, cfg.dropout, **stack)
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.eps)
        self.class_embed = nn.Linear(d, cfg.num_classes + 1)
        self.bbox_embed = BoxHead(d, 4, 3)
        for p in [*self.encoder.parameters(), *self.decoder.parameters()]:  # DETR's Transformer initialisation
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def feature_map(self, images: torch.Tensor, mask: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected features (B, D, h, w) and their padding (B, h, w), True at padded cells."""
        features = self.backbone(images)  # (B, C, h, w)
        if mask is None:
            cells = torch.zeros(features.shape[0], *features.shape[-2:], dtype=torch.bool, device=images.device)
        else:  # nearest cell centre, as DETR and HF downsample it
            cells = F.interpolate(mask[None].float(), size=features.shape[-2:])[0].bool()
        return self.input_proj(features), cells

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None, *,
                output_attentions: bool = False) -> dict:
        return self.forward_features(*self.feature_map(images, mask), output_attentions=output_attentions)

    def forward_features(self, features: torch.Tensor, feature_mask: torch.Tensor, *,
                         output_attentions: bool = False) -> dict:
        """The Transformer and the heads over a projected feature map (B, D, h, w) with padding (B, h, w)."""
        batch, _, h, w = features.shape
        src = features.flatten(2).transpose(1, 2)  # (B, h·w, D)
        pos = self.position(feature_mask).to(src.dtype).flatten(2).transpose(1, 2)  # (B, h·w, D)
        keys = padding_mask(~feature_mask.flatten(1))  # (B, 1, 1, h·w): True at real cells
        query_pos = self.query_embed.weight.unsqueeze(0).expand(batch, -1, -1)  # (B, Q, D)
        out = self.encoder(src, keys, pos=pos, need_weights=output_attentions)
        memory, encoder_weights = out if output_attentions else (out, None)
        memory = self.encoder_norm(memory)
        out = self.decoder(torch.zeros_like(query_pos), memory, None, keys, query_pos=query_pos, memory_pos=pos,
                           need_weights=output_attentions, return_all=self.cfg.aux_loss)
        hidden, decoder_weights = out if output_attentions else (out, None)
        hidden = self.decoder_norm(hidden)  # (L, B, Q, D) with aux_loss, else (B, Q, D)
        logits, boxes = self.class_embed(hidden), self.bbox_embed(hidden).sigmoid()
        if not self.cfg.aux_loss:
            logits, boxes = logits[None], boxes[None]
        result = {"logits": logits[-1], "boxes": boxes[-1],
                  "aux": [{"logits": a, "boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]}
        if output_attentions:
            result["encoder_attentions"] = encoder_weights
            result["decoder_attentions"] = [self_weights for self_weights, _ in decoder_weights]
            result["cross_attentions"] = [cross.unflatten(-1, (h, w)) for _, cross in decoder_weights]
            result["feature_mask"] = feature_mask
        return result


def build_detr(cfg: DetrConfig) -> DETR:
    return DETR(cfg)
