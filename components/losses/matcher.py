"""One-to-one assignment of predicted boxes to target boxes, by the Hungarian algorithm.

Each image's cost matrix is weighted −(class probability), L1 distance of
the normalised cxcywh boxes and −GIoU; the batch's costs are computed in one
pass on the device, then each image's block is solved on the CPU with
``scipy.optimize.linear_sum_assignment``. Unassigned predictions are the
"no object" ones of the loss.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from components.losses.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

Target = dict[str, Tensor]  # {"labels": (k,) int64, "boxes": (k, 4) normalised cxcywh}
Assignment = tuple[Tensor, Tensor]  # (pred_idx (m,) int64, target_idx (m,) int64), m = min(Q, k)


class HungarianMatcher(nn.Module):
    """Assigns each target box of an image to one distinct query, minimising the weighted matching cost."""

    def __init__(self, cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher needs at least one non-zero cost weight")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrix(self, logits: Tensor, boxes: Tensor, targets: list[Target]) -> Tensor:
        """(B, Q, K) costs of every query against every target box of the whole batch, K = Σ k_i.

        Only block [i, :, K_i] (image i's own targets) is used; computing all of
        them is one batched pass instead of B small ones.
        """
        batch, queries = logits.shape[:2]
        prob = logits.flatten(0, 1).float().softmax(-1)  # (B·Q, C+1)
        pred_boxes = boxes.flatten(0, 1).float()  # (B·Q, 4)
        labels = torch.cat([t["labels"] for t in targets])  # (K,)
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(pred_boxes)  # (K, 4)
        cost_class = -prob[:, labels]  # (B·Q, K): 1 − p would match the same, the 1 is left out
        cost_bbox = torch.cdist(pred_boxes, target_boxes, p=1)  # (B·Q, K)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))
        cost = self.cost_class * cost_class + self.cost_bbox * cost_bbox + self.cost_giou * cost_giou
        # A NaN or infinite cost (a diverged prediction) would make scipy refuse the whole batch:
        # such a pair becomes the most expensive one, chosen only when nothing else is left.
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big).view(batch, queries, -1)

    @torch.no_grad()
    def forward(self, logits: Tensor, boxes: Tensor, targets: list[Target]) -> list[Assignment]:
        """Per image, (pred_idx, target_idx): prediction pred_idx[j] is assigned target target_idx[j].

        logits (B, Q, C+1) with the last class "no object"; boxes (B, Q, 4)
        normalised cxcywh; targets, one dict per image. pred_idx is ascending.
        """
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        cost = self.cost_matrix(logits, boxes, targets).cpu()  # (B, Q, K)
        blocks = cost.split(sizes, dim=-1)  # image i's own columns: (B, Q, k_i)
        assignments = []
        for i, block in enumerate(blocks):
            pred_idx, target_idx = linear_sum_assignment(block[i].numpy())
            assignments.append((torch.as_tensor(pred_idx, dtype=torch.int64),
                                torch.as_tensor(target_idx, dtype=torch.int64)))
        return assignments

