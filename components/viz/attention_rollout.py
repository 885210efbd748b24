"""Attention rollout (Abnar & Zuidema, 2020): where the class token's information comes from, per image.

Each layer's attention, averaged over heads, is mixed half and half with the
identity (the residual connection carries the token itself forward), its rows
renormalised, and the layers multiplied from the first to the last. The class
token's row of the product, over the patch tokens, is a map of the image:
drawn over the picture, it shows what the classification looked at.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """``attentions``: per layer (B, heads, T, T), rows summing to 1 → (B, T, T) rolled-out attention."""
    rollout = None
    for layer in attentions:
        mixed = 0.5 * layer.float().mean(dim=1) + 0.5 * torch.eye(layer.shape[-1], device=layer.device)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else mixed @ rollout
    if rollout is None:
        raise ValueError("no attention maps to roll out")
    return rollout


def class_token_maps(rollout: torch.Tensor, grid: int, prefix_tokens: int = 1) -> np.ndarray:
    """The class token's rolled-out attention over the patches: (B, grid, grid), each scaled to a maximum of 1."""
    maps = rollout[:, 0, prefix_tokens:].reshape(-1, grid, grid).cpu().numpy()
    return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)


def overlay(encoded: bytes, heat: np.ndarray, size: int = 160) -> bytes:
    """The picture beside itself under the map (bright = attended), as one PNG: easy to compare by eye."""
    picture = Image.open(io.BytesIO(encoded)).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    mask = Image.fromarray((255 * heat).astype(np.uint8), "L").resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(picture, dtype=np.float32)
    weight = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    lit = pixels * (0.25 + 0.75 * weight) + np.array([255, 64, 0], np.float32) * 0.35 * weight
    pair = Image.new("RGB", (2 * size, size))
    pair.paste(picture, (0, 0))
    pair.paste(Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8)), (size, 0))
    out = io.BytesIO()
    pair.save(out, format="PNG")
    return out.getvalue()
