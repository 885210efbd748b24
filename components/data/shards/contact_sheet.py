"""A contact sheet: a grid of sample pictures with their captions, as one JPEG. Pure Pillow."""

from __future__ import annotations

import io
import textwrap
from typing import Iterable

from PIL import Image, ImageDraw, ImageFont

TILE = 160  # pixels per picture
CAPTION_LINES = 3
LINE_HEIGHT = 12


def contact_sheet(samples: Iterable[tuple[bytes, str]], columns: int = 6) -> Image.Image:
    """``samples``: (encoded image, caption) pairs. Undecodable pictures are drawn as grey tiles."""
    samples = list(samples)
    rows = max(1, -(-len(samples) // columns))
    cell_h = TILE + CAPTION_LINES * LINE_HEIGHT + 6
    sheet = Image.new("RGB", (columns * TILE, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (data, caption) in enumerate(samples):
        x, y = (i % columns) * TILE, (i // columns) * cell_h
        try:
            picture = Image.open(io.BytesIO(data)).convert("RGB")
            picture.thumbnail((TILE - 4, TILE - 4))
        except Exception:  # a sheet is for looking: show the gap, do not fail
            picture = Image.new("RGB", (TILE - 4, TILE - 4), "grey")
        sheet.paste(picture, (x + (TILE - picture.width) // 2, y + (TILE - picture.height) // 2))
        for n, line in enumerate(textwrap.wrap(caption, 26)[:CAPTION_LINES]):
            draw.text((x + 3, y + TILE + n * LINE_HEIGHT), line, fill="black", font=font)
    return sheet
