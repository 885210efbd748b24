"""DETR's set-prediction loss: Hungarian matching, then class and box terms on the matched pairs.

Input contract
- outputs: ``{"logits": (B, Q, C+1), "boxes": (B, Q, 4), "aux": [{"logits", "boxes"}, ...]}``;
  the last class is "no object", boxes are sigmoid outputs in normalised
  cxcywh, and ``aux`` (optional) holds the same pair for each earlier decoder
  layer, first layer first.
- targets: one dict per image, ``{"labels": (k,) int64 in [0, C), "boxes": (k, 4)}``
  in normalised cxcywh; k may be 0. ``targets_from_padded`` builds them from
  a padded batch (components/tasks/targets.py).

Returned terms (a dict of 0-d tensors)
- ``loss_ce``: cross-entropy over all queries, unmatched ones labelled
  "no object" with class weight ``eos_coef``; a weighted mean, as in DETR.
- ``loss_bbox``: L1 of matched boxes, ``loss_giou``: 1 − GIoU of matched
  boxes; both summed and divided by the normaliser ``mean_box_count``.
- the same three with suffix ``_i`` for auxiliary layer i (0 = first decoder layer).
- ``loss``: Σ weight × term over all of the above — what the optimizer steps on.
- logging only, no gradient: ``class_error`` (percentage of matched queries
  of the last layer whose top class is wrong) and ``cardinality_error``
  (mean |predicted objects − target objects| per image; ``_i`` per aux layer).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from components.losses.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from components.losses.matcher import Assignment, HungarianMatcher, Target
from components.tasks.targets import unpad


def mean_box_count(local_count: int | float | Tensor, device: torch.device | str | None = None) -> Tensor:
    """The box-loss normaliser: target boxes summed over all workers ÷ world size, at least 1; a 0-d float tensor.

    Every worker then divides its box losses by the same number, so the
    gradients averaged by data parallelism equal one big batch's. A collective
    when torch.distributed is initialised: every worker must call it, with
    ``device`` one its backend reduces on (the worker's GPU under NCCL).
    """
    count = torch.as_tensor(local_count, dtype=torch.float32, device=device).clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1)


def targets_from_padded(labels: Tensor, boxes: Tensor, counts: Tensor) -> list[Target]:
    """Per-image target dicts from padded labels (B, K), boxes (B, K, 4) and counts (B,)."""
    return [{"labels": lab.long(), "boxes": box}
            for lab, box in zip(unpad(labels, counts), unpad(boxes, counts))]


def _matched_queries(assignments: list[Assignment]) -> tuple[Tensor, Tensor]:
    """(image index, query index) of every matched prediction, images in order: two (M,) tensors."""
    image = torch.cat([torch.full_like(pred, i) for i, (pred, _) in enumerate(assignments)])
    query = torch.cat([pred for pred, _ in assignments])
    return image, query


class DetectionLoss(nn.Module):
    """DETR's set criterion (Carion et al., 2020): match each decoder layer's predictions, then score the pairs.

    num_classes counts the object classes, not "no object" (logits have
    num_classes + 1 columns). eos_coef is the class weight of "no object" in
    the cross-entropy; weight_ce, weight_bbox and weight_giou weigh the terms
    in the total, for the last and every auxiliary layer alike.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher | None = None, eos_coef: float = 0.1,
                 weight_ce: float = 1.0, weight_bbox: float = 5.0, weight_giou: float = 2.0):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher if matcher is not None else HungarianMatcher()
        self.eos_coef = eos_coef
        self.weights = {"loss_ce": weight_ce, "loss_bbox": weight_bbox, "loss_giou": weight_giou}
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("class_weight", class_weight, persistent=False)  # (C+1,)

    def loss_labels(self, outputs: dict, targets: list[Target], assignments: list[Assignment],
                    num_boxes: Tensor, log: bool = True) -> dict[str, Tensor]:
        """loss_ce over all B·Q queries; with log, class_error of the matched ones."""
        logits = outputs["logits"].float()  # (B, Q, C+1)
        image, query = _matched_queries(assignments)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, assignments)]).to(logits.device)
        classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)  # (B, Q)
        classes[image, query] = matched_labels
        loss_ce = F.cross_entropy(logits.transpose(1, 2), classes, self.class_weight.to(logits))
        losses = {"loss_ce": loss_ce}
        if log:
            with torch.no_grad():
                correct = (logits[image, query].argmax(-1) == matched_labels).float()  # (M,)
                # nothing matched (no targets): no error, where DETR's reference reports 100
                losses["class_error"] = 100 * (1 - correct.mean()) if correct.numel() else logits.new_zeros(())
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict, targets: list[Target], assignments: list[Assignment],
                         num_boxes: Tensor) -> dict[str, Tensor]:
        """cardinality_error: mean over images of |queries not predicting "no object" − target boxes|. No gradient."""
        logits = outputs["logits"]  # (B, Q, C+1)
        predicted = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()  # (B,)
        actual = torch.as_tensor([float(len(t["labels"])) for t in targets], device=logits.device)  # (B,)
        return {"cardinality_error": F.l1_loss(predicted, actual)}

    def loss_boxes(self, outputs: dict, targets: list[Target], assignments: list[Assignment],
                   num_boxes: Tensor) -> dict[str, Tensor]:
        """loss_bbox (L1) and loss_giou (1 − GIoU) over the matched pairs, each summed ÷ num_boxes."""
        image, query = _matched_queries(assignments)
        pred = outputs["boxes"].float()[image, query]  # (M, 4) cxcywh
        target = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, assignments)]).to(pred)  # (M, 4)
        loss_bbox = F.l1_loss(pred, target, reduction="sum")
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)))  # (M,)
        return {"loss_bbox": loss_bbox / num_boxes, "loss_giou": (1 - giou).sum() / num_boxes}

    def layer_losses(self, outputs: dict, targets: list[Target], num_boxes: Tensor,
                     log: bool = True) -> dict[str, Tensor]:
        """Match one decoder layer's predictions to the targets, then every term of that layer."""
        assignments = self.matcher(outputs["logits"], outputs["boxes"], targets)
        losses = self.loss_labels(outputs, targets, assignments, num_boxes, log=log)
        losses.update(self.loss_cardinality(outputs, targets, assignments, num_boxes))
        losses.update(self.loss_boxes(outputs, targets, assignments, num_boxes))
        return losses

    def forward(self, outputs: dict, targets: list[Target], num_boxes: Tensor | float | None = None
                ) -> dict[str, Tensor]:
        """All terms of the last layer and of every auxiliary layer, and their weighted total under ``loss``.

        num_boxes defaults to ``mean_box_count`` of these targets (a collective
        under torch.distributed); pass it to normalise by something else.
        """
        if outputs["logits"].shape[-1] != self.num_classes + 1:
            raise ValueError(f"logits have {outputs['logits'].shape[-1]} classes; expected num_classes + 1 = "
                             f"{self.num_classes + 1} (the last one is 'no object')")
        if num_boxes is None:
            num_boxes = mean_box_count(sum(len(t["labels"]) for t in targets), outputs["logits"].device)
        losses, total = {}, 0.0
        for i, layer in enumerate([outputs, *(outputs.get("aux") or [])]):
            terms = self.layer_losses(layer, targets, num_boxes, log=i == 0)
            total = total + sum(weight * terms[name] for name, weight in self.weights.items())
            suffix = "" if i == 0 else f"_{i - 1}"
            losses.update({name + suffix: value for name, value in terms.items()})
        losses["loss"] = total
        return losses
