"""Box formats, areas and pairwise overlaps for set-prediction detectors.

Formats (the last dimension holds the 4 numbers):
- ``cxcywh``: centre x, centre y, width, height — what DETR predicts and its
  targets use, normalised by the image size to [0, 1].
- ``xyxy``: corners x0, y0, x1, y1 with x1 >= x0 and y1 >= y0 — what areas and
  overlaps are computed in, and what torchvision.ops takes.
- ``xywh``: top-left corner, width, height — COCO's annotation format.

Degenerate boxes (zero width or height) are valid input: a pair whose union
(or enclosing box) has zero area gets an IoU (or enclosing penalty) of 0
instead of torchvision's NaN, and the gradient through such a pair stays
finite. Inverted boxes (x1 < x0) are not checked for: that check would stall
the device on every call, and sigmoid-predicted widths are never negative.
Half-precision inputs are computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _upcast(boxes: Tensor) -> Tensor:
    """Float16/bfloat16 → float32, so products of coordinates neither overflow nor round away."""
    return boxes.float() if boxes.dtype in (torch.float16, torch.bfloat16) else boxes


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) centre-size → (..., 4) corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) corners → (..., 4) centre-size."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) COCO top-left-size → (..., 4) corners."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) corners → (...) areas."""
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator where denominator > 0, else 0; no NaN in the value or its gradient."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, torch.ones_like(denominator)), 0.0)


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of (N, 4) and (M, 4) corner boxes: two (N, M) tensors."""
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    area1, area2 = box_area(boxes1), box_area(boxes2)  # (N,), (M,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    size = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    inter = size[..., 0] * size[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    return _safe_divide(inter, union), union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al., 2019) of (N, 4) and (M, 4) corner boxes: (N, M) in [-1, 1].

    GIoU = IoU − (C − U) / C, with U the union and C the area of the smallest
    box enclosing both.
    """
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    iou, union = box_iou(boxes1, boxes2)  # (N, M), (N, M)
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    size = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    enclosing = size[..., 0] * size[..., 1]  # (N, M)
    return iou - _safe_divide(enclosing - union, enclosing)
