"""Detections as pictures: boxes drawn on held-out images, and where a DETR query looked. Pure Pillow.

- ``draw_detections``: one image scaled to fit a tile, ground-truth boxes in
  green (thin), predicted boxes in red (thick) labelled "class score".
- ``detections_picture``: a grid of such tiles straight from
  ``coco_map.detection_outputs`` rows (boxes in the stored image's pixels, the
  ground truth columns when present), each captioned with its counts. Its
  tiles are larger than ``contact_sheet``'s 160 pixels, where box labels would
  not be legible, so it lays out its own grid in the same style.
- ``decoder_attention_picture``: the image with a few queries' boxes, one
  colour each, then per query its decoder cross-attention over the encoder's
  feature map, stretched over the image and lit where the query attends, with
  its box on top: what each box was predicted from.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 320  # pixels per image in detections_picture
ATTENTION_TILE = 192  # pixels per panel in decoder_attention_picture
CAPTION_H = 14
MARGIN = 4
PREDICTED = (230, 30, 30)
TRUE = (20, 180, 60)
QUERY_COLOURS = [(230, 30, 30), (30, 110, 230), (20, 170, 60), (240, 150, 0), (160, 40, 200), (0, 180, 190),
                 (200, 60, 130), (120, 120, 0)]


def _rgb(image: bytes | Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _fit(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    """The image scaled (up or down) so its longer side is ``side``, and that scale."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR), scale


def _label(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, colour, font) -> None:
    """White text on a ``colour`` strip just above (x, y), or just inside when there is no room above."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    h = bottom - top + 2
    y = y - h if y - h >= 0 else y
    draw.rectangle([x, y, x + right - left + 3, y + h], fill=colour)
    draw.text((x + 2, y + 1 - top), text, fill="white", font=font)


def draw_detections(image: bytes | Image.Image | np.ndarray, boxes: np.ndarray, labels: Sequence[int],
                    scores: Sequence[float], gt_boxes: np.ndarray | None = None, gt_labels: Sequence[int] = (),
                    classes: Mapping[int, str] | None = None, min_score: float = 0.5, side: int = TILE
                    ) -> Image.Image:
    """The image scaled to a longer side of ``side`` with ground truth (green) and predictions scoring at least
    ``min_score`` (red, "name score"). ``boxes`` (k, 4) and ``gt_boxes`` (g, 4) are xyxy in the image's pixels."""
    names = dict(classes or {})
    picture, scale = _fit(_rgb(image), side)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    if gt_boxes is not None:
        for box, label in zip(np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4) * scale, gt_labels):
            draw.rectangle(box.tolist(), outline=TRUE, width=1)
    for box, label, score in zip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale, labels, scores):
        if score < min_score:
            continue
        draw.rectangle(box.tolist(), outline=PREDICTED, width=2)
        _label(draw, box[0], box[1], f"{names.get(int(label), str(int(label)))} {score:.2f}", PREDICTED, font)
    return picture


def _grid(tiles: Sequence[Image.Image], captions: Sequence[str], columns: int, side: int) -> Image.Image:
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    cell_w, cell_h = side + MARGIN, side + CAPTION_H + MARGIN
    sheet = Image.new("RGB", (columns * cell_w + MARGIN, rows * cell_h + MARGIN), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = MARGIN + (i % columns) * cell_w, MARGIN + (i // columns) * cell_h
        sheet.paste(tile, (x + (side - tile.width) // 2, y + (side - tile.height) // 2))
        draw.text((x, y + side + 1), caption, fill="black", font=font)
    return sheet


def detections_picture(images: Sequence[bytes | Image.Image | np.ndarray], outputs: Mapping[str, np.ndarray],
                       classes: Mapping[int, str] | None = None, min_score: float = 0.5, columns: int = 3,
                       side: int = TILE) -> Image.Image:
    """A grid of ``draw_detections`` tiles, image i with row i of ``outputs`` (``detection_outputs``'s columns,
    and the ground truth columns when present; numpy or CPU tensors).

    Size: (columns · (side + 4) + 4) × (rows · (side + 18) + 4) pixels, columns = min(columns, len(images))."""
    cols = {k: np.asarray(v) for k, v in outputs.items()}
    tiles, captions = [], []
    for i, image in enumerate(images):
        k = int(cols["num_detections"][i])
        boxes, labels, scores = cols["det_boxes"][i, :k], cols["det_labels"][i, :k], cols["det_scores"][i, :k]
        gt_boxes, gt_labels = None, ()
        if "gt_boxes" in cols:
            g = int(cols["num_gt"][i])
            xywh = cols["gt_boxes"][i, :g].astype(np.float64)
            gt_boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
            gt_labels = cols["gt_labels"][i, :g]
        tiles.append(draw_detections(image, boxes, labels, scores, gt_boxes, gt_labels, classes, min_score, side))
        shown = int((scores >= min_score).sum())
        truth = f", {len(gt_labels)} true" if gt_boxes is not None else ""
        captions.append(f"image {int(cols['image_id'][i])}: {shown} >= {min_score:g}{truth}")
    if not tiles:
        raise ValueError("no images to draw")
    return _grid(tiles, captions, columns, side)


def _lit(picture: Image.Image, heat: np.ndarray) -> Image.Image:
    """``picture`` darkened where ``heat`` (same size, max 1) is low and tinted orange where it is high."""
    pixels = np.asarray(picture, dtype=np.float32)
    weight = heat[..., None]
    lit = pixels * (0.2 + 0.8 * weight) + np.array([255, 96, 0], np.float32) * 0.3 * weight
    return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))


def decoder_attention_picture(image: bytes | Image.Image | np.ndarray, attention: np.ndarray, boxes: np.ndarray,
                              labels: Sequence[str] | None = None, extent: tuple[int, int] | None = None,
                              columns: int = 4, side: int = ATTENTION_TILE) -> Image.Image:
    """The image with Q queries' boxes (one colour each), then one panel per query: its attention map lit over
    the image, with its box.

    ``attention`` (Q, h, w): each query's weights over the encoder's feature map (any head average, one layer);
    ``extent`` (h', w') is the part of that map covering the image when the rest is padding (DETR's canvas:
    ceil(image side / stride)); None = all of it. ``boxes`` (Q, 4) xyxy in the image's pixels; ``labels`` one
    caption per query. Size: min(columns, Q + 1) panels across, ceil((Q + 1) / columns) down, each
    (side + 4) × (side + 18), plus a 4-pixel border.
    """
    attention = np.asarray(attention, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if attention.ndim != 3 or len(attention) != len(boxes):
        raise ValueError(f"attention {attention.shape} and boxes {boxes.shape}: need (Q, h, w) and (Q, 4)")
    if extent is not None:
        attention = attention[:, : extent[0], : extent[1]]
    labels = list(labels) if labels is not None else [f"query {q}" for q in range(len(boxes))]
    picture, scale = _fit(_rgb(image), side)
    font = ImageFont.load_default()
    overview = picture.copy()
    draw = ImageDraw.Draw(overview)
    panels, captions = [overview], ["boxes"]
    for q, (weights, box) in enumerate(zip(attention, boxes * scale)):
        colour = QUERY_COLOURS[q % len(QUERY_COLOURS)]
        draw.rectangle(box.tolist(), outline=colour, width=2)
        _label(draw, box[0], box[1], str(q), colour, font)
        heat = weights / max(float(weights.max()), 1e-12)
        heat_map = Image.fromarray((255 * heat).astype(np.uint8), "L").resize(picture.size, Image.Resampling.BILINEAR)
        panel = _lit(picture, np.asarray(heat_map, dtype=np.float32) / 255.0)
        ImageDraw.Draw(panel).rectangle(box.tolist(), outline=colour, width=2)
        panels.append(panel)
        captions.append(f"{q}: {labels[q]}")
    return _grid(panels, captions, columns, side)
