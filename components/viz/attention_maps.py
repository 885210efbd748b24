"""Attention maps as one picture: a grid of heat maps, a row per layer and a column per head. Pure Pillow.

Each cell is the (query × key) attention of one head over the tokens of one
input, darker where a query attends more; the tokens are listed under the
grid in order, so cell positions can be read back to words.
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CELL = 128  # pixels per heat map
LABEL_H = 14  # height of a cell's "layer i head j" line
MARGIN = 6


def attention_grid(attentions: Sequence[np.ndarray], tokens: Sequence[str], title: str = "") -> Image.Image:
    """``attentions``: one (heads, L, L) array per layer, rows summing to 1; ``tokens``: the L tokens."""
    if not attentions:
        raise ValueError("no attention maps to draw")
    layers, heads = len(attentions), attentions[0].shape[0]
    length = attentions[0].shape[-1]
    if len(tokens) != length:
        raise ValueError(f"{len(tokens)} tokens for attention over {length} positions")
    font = ImageFont.load_default()
    token_text = textwrap.wrap(" ".join(f"{i}:{t}" for i, t in enumerate(tokens)), max(40, heads * CELL // 7))
    width = heads * (CELL + MARGIN) + MARGIN
    top = LABEL_H + MARGIN if title else MARGIN
    grid_h = layers * (CELL + LABEL_H + MARGIN)
    sheet = Image.new("RGB", (width, top + grid_h + len(token_text) * LABEL_H + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((MARGIN, MARGIN // 2), title, fill="black", font=font)
    for layer, maps in enumerate(attentions):
        for head in range(heads):
            x = MARGIN + head * (CELL + MARGIN)
            y = top + layer * (CELL + LABEL_H + MARGIN)
            draw.text((x, y), f"layer {layer + 1} head {head + 1}", fill="black", font=font)
            sheet.paste(_heat_map(maps[head]), (x, y + LABEL_H))
    for n, line in enumerate(token_text):
        draw.text((MARGIN, top + grid_h + n * LABEL_H), line, fill="black", font=font)
    return sheet


def _heat_map(weights: np.ndarray) -> Image.Image:
    """One (L, L) map scaled to CELL pixels: white = 0, dark blue = the map's largest weight."""
    w = np.asarray(weights, dtype=np.float32)
    w = w / max(float(w.max()), 1e-9)
    rgb = np.stack([255 * (1 - w), 255 * (1 - 0.8 * w), 255 * (1 - 0.3 * w)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").resize((CELL, CELL), Image.Resampling.NEAREST)
