"""CLIP: a ViT image tower and a causal text transformer projected into one embedding space.

Data contract: ``images`` (B, 3, H, W) float, normalised; ``tokens`` (B, L)
int64, padded with ``pad_id`` after the end-of-text token. The text feature
is the final hidden state at the last non-pad position (the end-of-text
token), which under the look-ahead mask has seen the whole caption.

That pooling rule is tvp's: open_clip takes the position of the largest id
(``argmax``; the end-of-text token is the last id of CLIP's vocabulary, 49407)
and Hugging Face's ``CLIPTextModel`` the first position of ``eos_token_id``.
For text tokenised as open_clip does (end-of-text, then zeros) all three pick
the same position; tvp's rule also serves its own caption tokenizers, whose
end-of-text id is not the largest. (HF's CLIP tokenizer pads with the
end-of-text id itself: such tokens need their padding set to ``pad_id``.)

The computation is OpenAI's and open_clip's ``CLIP`` when the config asks for
it (the ``CLIP_PRESETS`` do): image tower = patches (no bias) + class token +
positions, ``ln_pre``, pre-norm blocks, ``ln_post`` on the class token,
projection without bias; text tower = token embeddings + positions, causal
pre-norm blocks, ``ln_final``, the feature at the end-of-text token,
projection without bias; LayerNorm eps 1e-5 and QuickGELU in both towers for
OpenAI's weights. ``clip_layouts.py`` maps the weights and configs to and from
open_clip's and Hugging Face's layouts.

Parameter names: ``visual.*`` (``vit.py``'s), ``text.{token_embed, pos_embed
(1, L, D), encoder.layers.i.*, ln_final}``, ``visual_proj.weight`` (E, Dv),
``text_proj.weight`` (E, Dt), ``logit_scale`` (a scalar, the log of the
temperature's inverse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from components.models.transformer import Encoder, activation as _activation, causal_mask
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
    eps: float = 1e-5  # LayerNorm epsilon (OpenAI's and open_clip's)
    activation: str = "gelu"  # MLP activation: gelu (exact), gelu_tanh, quick_gelu (OpenAI's weights), relu

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")
        _activation(self.activation)


@dataclass
class CLIPConfig:
    embed_dim: int = 512  # width of the shared image-text space
    vision: ViTConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)  # clamp, as in the CLIP paper

    __pydantic_config__ = {"extra": "forbid"}


# OpenAI's CLIP towers (what its released weights and open_clip's "-quickgelu" models compute): LayerNorm before
# the image tower's blocks, patches without bias, QuickGELU, eps 1e-5.
_OPENAI_VISION = dict(ln_pre=True, patch_bias=False, eps=1e-5, activation="quick_gelu")
_OPENAI_TEXT = dict(vocab_size=49408, context_length=77, eps=1e-5, activation="quick_gelu")

# OpenAI's names (the CLIP paper's models; open_clip's "ViT-B-32-quickgelu" and so on); "tiny" is the same
# computation at the size of pipelines/configs/clip-tiny.yaml (32-pixel images, 16-token captions, tvp's
# caption tokenizer), "micro" the smallest for tests. Override fields with ``clip_config``.
CLIP_PRESETS: dict[str, dict] = {
    "ViT-B/32": dict(embed_dim=512,
                     vision=dict(image_size=224, patch_size=32, width=768, layers=12, heads=12, **_OPENAI_VISION),
                     text=dict(width=512, layers=12, heads=8, **_OPENAI_TEXT)),
    "ViT-B/16": dict(embed_dim=512,
                     vision=dict(image_size=224, patch_size=16, width=768, layers=12, heads=12, **_OPENAI_VISION),
                     text=dict(width=512, layers=12, heads=8, **_OPENAI_TEXT)),
    "ViT-L/14": dict(embed_dim=768,
                     vision=dict(image_size=224, patch_size=14, width=1024, layers=24, heads=16, **_OPENAI_VISION),
                     text=dict(width=768, layers=12, heads=12, **_OPENAI_TEXT)),
    "ViT-L/14@336px": dict(embed_dim=768,
                           vision=dict(image_size=336, patch_size=14, width=1024, layers=24, heads=16,
                                       **_OPENAI_VISION),
                           text=dict(width=768, layers=12, heads=12, **_OPENAI_TEXT)),
    "tiny": dict(embed_dim=64,
                 vision=dict(image_size=32, patch_size=8, width=64, layers=2, heads=2, **_OPENAI_VISION),
                 text=dict(_OPENAI_TEXT, vocab_size=512, context_length=16, width=64, layers=2, heads=2)),
    "micro": dict(embed_dim=16,
                  vision=dict(image_size=16, patch_size=8, width=32, layers=1, heads=2, **_OPENAI_VISION),
                  text=dict(_OPENAI_TEXT, vocab_size=300, context_length=8, width=32, layers=1, heads=2)),
}


def clip_config(preset: str = "ViT-B/32", **overrides) -> CLIPConfig:
    """A config from a named preset (``"ViT-B/32"``, ``"ViT-B/16"``, ``"ViT-L/14"``, ``"ViT-L/14@336px"``,
    ``"tiny"``, ``"micro"``) with fields overridden: top-level fields by name, tower fields through ``vision``
    and ``text`` dicts (merged into the preset's), and ``activation`` for both towers at once
    (``clip_config("ViT-B/32", activation="gelu")`` is open_clip's ``ViT-B-32``, the LAION and DataComp models)."""
    if preset not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP preset {preset!r}; known: {', '.join(CLIP_PRESETS)}")
    values = {**CLIP_PRESETS[preset], **overrides}
    both = {"activation": values.pop("activation")} if "activation" in overrides else {}
    vision = {**CLIP_PRESETS[preset]["vision"], **both, **overrides.get("vision", {})}
    text = {**CLIP_PRESETS[preset]["text"], **both, **overrides.get("text", {})}
    return CLIPConfig(**{**values, "vision": ViTConfig(**vision), "text": TextConfig(**text)})


class TextTransformer(nn.Module):
    """Token and position embeddings, causal pre-norm blocks, final norm: (B, L) → (B, D)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.context_length, cfg.width) * 0.01)
        self.encoder = Encoder(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, eps=cfg.eps, activation=cfg.activation)
        self.ln_final = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.register_buffer("attn_mask", causal_mask(cfg.context_length), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        x = self.token_embed(tokens) + self.pos_embed[:, :length]  # (B, L, D)
        x = self.ln_final(self.encoder(x, self.attn_mask[:length, :length]))
        # The last non-pad position, not the count of non-pad tokens: with OpenAI's vocabulary the pad id 0 is
        # also "!", which may appear inside a caption.
        filled = (tokens != self.cfg.pad_id).flip(1).int()  # argmax finds the first True of the flipped rows
        eot = (length - 1 - filled.argmax(dim=1)) * filled.amax(dim=1)  # (B,); an all-pad row pools position 0
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
