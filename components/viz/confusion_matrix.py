"""A confusion matrix as a picture: rows are true classes, columns predictions. Pure Pillow.

Each cell is shaded by its share of the row (recall per class), so classes of
different sizes read alike; counts are written in the cells and class names
along the rows while they fit (up to ``MAX_LABELLED`` classes).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_LABELLED = 40  # beyond this many classes, cells are too small for text
PICTURE = 640  # side of the matrix in pixels, whatever the class count
NAME_WIDTH = 110


def confusion_picture(matrix: np.ndarray, class_names: list[str], title: str = "") -> Image.Image:
    classes = matrix.shape[0]
    cell = max(1, PICTURE // max(classes, 1))
    labelled = classes <= MAX_LABELLED
    left, top = (NAME_WIDTH if labelled else 8), 24
    side = cell * classes
    sheet = Image.new("RGB", (left + side + 8, top + side + 24), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((8, 6), title or "confusion matrix (rows: true class, columns: predicted)", fill="black", font=font)
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    share = matrix / totals
    for row in range(classes):
        y = top + row * cell
        if labelled:
            draw.text((4, y + cell // 2 - 5), class_names[row][:16], fill="black", font=font)
        for col in range(classes):
            x = left + col * cell
            shade = float(share[row, col])
            colour = (int(255 * (1 - shade)), int(255 * (1 - 0.7 * shade)), int(255 * (1 - 0.2 * shade)))
            if row != col and matrix[row, col]:
                colour = (255, int(255 * (1 - 0.8 * shade)), int(255 * (1 - 0.8 * shade)))  # errors in red
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(230, 230, 230))
            if labelled and matrix[row, col] and cell >= 14:
                draw.text((x + 2, y + cell // 2 - 5), str(int(matrix[row, col])), fill="black", font=font)
    accuracy = np.trace(matrix) / max(int(matrix.sum()), 1)
    draw.text((left, top + side + 6), f"{int(matrix.sum())} samples, top-1 {accuracy:.3f}", fill="black", font=font)
    return sheet
