"""Zero-shot predictions as a picture: held-out images, each beside its top-k classes as bars. Pure Pillow.

One cell per image: the image scaled into a ``TILE`` square on the left, and
to its right k rows "name  probability" over a bar as long as the
probability. The true class's bar is green, the others blue; when the true
class is not the top-1 the top bar is red, and a caption under the image
names the true class and whether it is the top-1, in the top k or not. Cells go
``columns`` across in the style of ``contact_sheet``.

Size: (columns · (TILE + PANEL) + MARGIN) × (rows · (TILE + CAPTION_H) + MARGIN)
pixels, columns = min(columns, number of images), rows = ceil(images / columns).
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 128  # pixels per image
PANEL = 200  # pixels of bars beside each image
CAPTION_H = 16
MARGIN = 6
ROW_H = 24  # one prediction: its text line and its bar
TRUE = (20, 170, 60)
WRONG = (220, 40, 40)
OTHER = (70, 120, 200)


def _rgb(image: bytes | Image.Image | np.ndarray) -> Image.Image:
    try:
        if isinstance(image, (bytes, bytearray)):
            image = Image.open(io.BytesIO(image))
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception:  # a picture is for looking: show the gap, do not fail
        return Image.new("RGB", (TILE, TILE), "grey")


def _name(class_names: Sequence[str] | Mapping[int, str], label: int) -> str:
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    return str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def top_predictions_picture(images: Sequence[bytes | Image.Image | np.ndarray], top_classes: np.ndarray,
                            top_probabilities: np.ndarray, class_names: Sequence[str] | Mapping[int, str],
                            labels: Sequence[int] | None = None, columns: int = 3) -> Image.Image:
    """``top_classes`` (N, k) class ids best first and ``top_probabilities`` (N, k) their probabilities (e.g.
    ``zero_shot_top_predictions`` with rows mapped to ids); ``class_names`` by id (a list or a mapping);
    ``labels`` the true ids, or None. Rows beyond what fits in ``TILE`` pixels (5 at the defaults) are not drawn."""
    top_classes = np.asarray(top_classes).reshape(len(images), -1)
    top_probabilities = np.asarray(top_probabilities, dtype=np.float64).reshape(len(images), -1)
    if not len(images):
        raise ValueError("no images to draw")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    cell_w, cell_h = TILE + PANEL, TILE + CAPTION_H
    sheet = Image.new("RGB", (columns * cell_w + MARGIN, rows * cell_h + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    shown = max(1, min(top_classes.shape[1], TILE // ROW_H))
    for i, image in enumerate(images):
        x, y = MARGIN + (i % columns) * cell_w, MARGIN + (i // columns) * cell_h
        picture = _rgb(image)
        picture.thumbnail((TILE - 4, TILE - 4))
        sheet.paste(picture, (x + (TILE - 4 - picture.width) // 2, y + (TILE - 4 - picture.height) // 2))
        truth = None if labels is None else int(labels[i])
        predicted = [int(c) for c in top_classes[i]]
        for r, (label, probability) in enumerate(zip(predicted[:shown], top_probabilities[i][:shown])):
            bar_x, bar_y = x + TILE + 2, y + r * ROW_H
            colour = TRUE if label == truth else (WRONG if r == 0 and truth is not None else OTHER)
            draw.text((bar_x, bar_y), f"{_name(class_names, label)[:22]} {probability:.2f}", fill="black", font=font)
            length = int(round((PANEL - 2 * MARGIN) * min(max(float(probability), 0.0), 1.0)))
            draw.rectangle([bar_x, bar_y + 13, bar_x + PANEL - 2 * MARGIN, bar_y + 19], fill=(235, 235, 235))
            if length:
                draw.rectangle([bar_x, bar_y + 13, bar_x + length, bar_y + 19], fill=colour)
        if truth is not None:
            verdict = "ok" if predicted and predicted[0] == truth else (
                f"in top {len(predicted)}" if truth in predicted else f"not in top {len(predicted)}")
            caption = f"true: {_name(class_names, truth)[:24]} ({verdict})"
            draw.text((x, y + TILE), caption, fill=TRUE if verdict == "ok" else WRONG, font=font)
    return sheet
