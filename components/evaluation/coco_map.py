"""COCO box mAP from per-sample outputs, with pycocotools: a per-batch step and a reduction.

``detection_outputs`` runs per batch on the model's raw outputs (DETR's
PostProcess: softmax over classes, the trailing no-object class dropped, each
query's best class and its score; normalised cxcywh boxes scaled by the
stored image's size to pixel xyxy) and keeps each image's ``top_k`` queries by
score in fixed-shape arrays with counts, so the outputs of many batches and
workers concatenate along dim 0.

``coco_metrics`` reduces that concatenation, in any order and any batch
split, to what one pycocotools run over the whole set gives:

- **ground truth** is carried in the outputs (``GROUND_TRUTH_COLUMNS``, every
  annotation of the sample, crowd regions included, which COCOeval ignores
  rather than counts as misses), so the evaluated images are exactly the
  samples evaluated, images without annotations included (their detections
  are false positives). ``gt`` may instead be the eval set's ``.json`` metas or
  a pycocotools ``COCO``: then the images are the set's, and an image no
  output covers counts as all missed.
- **duplicates**: rows are ordered by image id (stably) and the first row of
  an id kept, so a sample evaluated twice (a sampler padding the last batch)
  counts once and the order of the concatenation does not matter.
- **categories**: the model's class index is the category id
  (num_classes = max id + 1, ids may be sparse), so nothing is remapped.
  Categories are those of the ground truth and the detections; one without
  ground truth gets no AP and does not enter the means (COCOeval's rule).
- **units**: boxes and areas are in the stored image's pixels, as the shards
  hold them; the small/medium/large ranges (32², 96²) are taken there. Ground
  truth areas are the annotations' ``areas`` (COCO's segment areas), as the
  official evaluation uses.
- **undefined values**: COCOeval's -1 (no ground truth in that area range, or
  none at all) is returned as NaN, not 0: an undefined AP is not a bad one.

``coco_results_json`` writes detections in COCO's results format, for export
or for the official evaluation server.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from components.data.loading.detection_augment import GROUND_TRUTH_COLUMNS, parse_annotations

DETECTION_COLUMNS = ("image_id", "det_boxes", "det_scores", "det_labels", "num_detections")
# COCOeval.stats positions of what coco_metrics returns.
METRIC_NAMES = {"AP": 0, "AP50": 1, "AP75": 2, "AP_small": 3, "AP_medium": 4, "AP_large": 5, "AR100": 8}


# -- per batch ---------------------------------------------------------------------------------------------------

@torch.no_grad()
def detection_outputs(pred_logits: torch.Tensor, pred_boxes: torch.Tensor, orig_size: torch.Tensor,
                      image_id: torch.Tensor, top_k: int = 100,
                      ground_truth: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per-image detections from one batch of DETR outputs.

    ``pred_logits`` (B, Q, C + 1) with the last class "no object"; ``pred_boxes`` (B, Q, 4) normalised cxcywh;
    ``orig_size`` (B, 2) the stored image's (h, w); ``image_id`` (B,). Returns, with K = min(top_k, Q):
    ``image_id`` (B,) int64, ``det_boxes`` (B, K, 4) float32 xyxy in stored-image pixels, ``det_scores``
    (B, K) float32 (best class probability, descending), ``det_labels`` (B, K) int64 category ids,
    ``num_detections`` (B,) int64 (K for every image: DETR keeps every query). ``ground_truth`` (the eval
    batch) adds its ``GROUND_TRUTH_COLUMNS`` unchanged.
    """
    probs = pred_logits.float().softmax(dim=-1)[..., :-1]  # (B, Q, C), no-object dropped
    scores, labels = probs.max(dim=-1)  # (B, Q)
    k = min(top_k, scores.shape[1])
    scores, order = torch.sort(scores, dim=-1, descending=True, stable=True)
    scores, order = scores[:, :k], order[:, :k]  # (B, K)
    labels = labels.gather(1, order)
    cx, cy, w, h = pred_boxes.float().gather(1, order[..., None].expand(-1, -1, 4)).unbind(-1)  # (B, K) each
    height, width = orig_size.float().unbind(-1)  # (B,)
    boxes = torch.stack([(cx - 0.5 * w) * width[:, None], (cy - 0.5 * h) * height[:, None],
                         (cx + 0.5 * w) * width[:, None], (cy + 0.5 * h) * height[:, None]], dim=-1)  # (B, K, 4)
    out = {"image_id": image_id.to(torch.int64), "det_boxes": boxes, "det_scores": scores,
           "det_labels": labels.to(torch.int64),
           "num_detections": torch.full_like(image_id, k, dtype=torch.int64)}
    if ground_truth is not None:
        out.update({c: ground_truth[c] for c in GROUND_TRUTH_COLUMNS})
    return out


# -- reduction ---------------------------------------------------------------------------------------------------

def _first_rows(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """Row indices ordered by image id, the first row of each id only."""
    ids = np.asarray(outputs["image_id"], dtype=np.int64).reshape(-1)
    order = np.argsort(ids, kind="stable")
    first = np.ones(len(order), dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    return order[first]


def coco_results_json(detections: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    """COCO's results format, [{image_id, category_id, bbox: [x, y, w, h], score}], from ``detection_outputs``
    (concatenated, as numpy or tensors), image by image in id order, each image's detections by score."""
    cols = {c: np.asarray(detections[c]) for c in DETECTION_COLUMNS}
    results = []
    for row in _first_rows(cols):
        image_id, k = int(cols["image_id"][row]), int(cols["num_detections"][row])
        boxes = cols["det_boxes"][row, :k].astype(np.float64)
        for (x0, y0, x1, y1), label, score in zip(boxes.tolist(), cols["det_labels"][row, :k].tolist(),
                                                  cols["det_scores"][row, :k].tolist()):
            results.append({"image_id": image_id, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(score)})
    return results


def _coco(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _dataset(images: list[dict], annotations: list[dict], category_ids: set[int],
             classes: Mapping[int, str] | None) -> dict[str, Any]:
    names = dict(classes or {})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": names.get(c, str(c))} for c in sorted(category_ids)]}


def _annotation(ann_id: int, image_id: int, box_xywh: Sequence[float], label: int, crowd: int, area: float) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": int(label), "bbox": [float(v) for v in box_xywh],
            "iscrowd": int(crowd), "area": float(area)}


def ground_truth_from_outputs(outputs: Mapping[str, np.ndarray], classes: Mapping[int, str] | None = None,
                              extra_categories: Sequence[int] = ()) -> COCO:
    """The ground-truth ``COCO`` of the evaluated samples, from the ``GROUND_TRUTH_COLUMNS`` carried in the
    outputs. Annotation ids are assigned 1, 2, ... in image-id order (COCOeval treats id 0 as unmatched)."""
    cols = {c: np.asarray(outputs[c]) for c in ("image_id", *GROUND_TRUTH_COLUMNS)}
    images, annotations, categories = [], [], set(int(c) for c in extra_categories)
    for row in _first_rows(cols):
        image_id, k = int(cols["image_id"][row]), int(cols["num_gt"][row])
        images.append({"id": image_id})
        for box, label, crowd, area in zip(cols["gt_boxes"][row, :k].astype(np.float64).tolist(),
                                           cols["gt_labels"][row, :k].tolist(), cols["gt_iscrowd"][row, :k].tolist(),
                                           cols["gt_areas"][row, :k].astype(np.float64).tolist()):
            annotations.append(_annotation(len(annotations) + 1, image_id, box, label, crowd, area))
            categories.add(int(label))
    return _coco(_dataset(images, annotations, categories, classes))


def ground_truth_from_metas(metas: Sequence[Mapping[str, Any] | bytes | str],
                            classes: Mapping[int, str] | None = None, extra_categories: Sequence[int] = ()) -> COCO:
    """The ground-truth ``COCO`` of a whole eval set from its samples' ``.json`` metas (one per image)."""
    images, annotations, categories, seen = [], [], set(int(c) for c in extra_categories), set()
    for meta in metas:
        meta = meta if isinstance(meta, Mapping) else json.loads(meta)
        image_id = int(meta["image_id"])
        if image_id in seen:
            continue
        seen.add(image_id)
        images.append({"id": image_id, "width": meta.get("width"), "height": meta.get("height")})
        ann = parse_annotations(meta)
        for box, label, crowd, area in zip(ann.boxes_xywh.tolist(), ann.labels.tolist(), ann.iscrowd.tolist(),
                                           ann.areas.tolist()):
            annotations.append(_annotation(len(annotations) + 1, image_id, box, label, crowd, area))
            categories.add(int(label))
    return _coco(_dataset(images, annotations, categories, classes))


def _with_categories(gt: COCO, category_ids: set[int]) -> COCO:
    """``gt`` with any missing category ids added (they have no ground truth, so no AP: the means are unchanged)."""
    missing = category_ids - set(gt.getCatIds())
    if not missing:
        return gt
    dataset = dict(gt.dataset)
    dataset["categories"] = list(dataset.get("categories", [])) + [{"id": c, "name": str(c)} for c in sorted(missing)]
    return _coco(dataset)


def coco_eval(outputs: Mapping[str, np.ndarray], gt: COCO | Sequence[Mapping[str, Any]] | None = None,
              classes: Mapping[int, str] | None = None) -> COCOeval:
    """A summarised bbox ``COCOeval`` (printing nothing) of the concatenated ``detection_outputs``.

    ``gt``: None = the ground truth carried in ``outputs``; a sequence of the eval set's metas; or a ``COCO``.
    """
    results = coco_results_json(outputs)
    detected = {r["category_id"] for r in results}
    if gt is None:
        gt = ground_truth_from_outputs(outputs, classes, detected)
    elif not isinstance(gt, COCO):
        gt = ground_truth_from_metas(gt, classes, detected)
    else:
        gt = _with_categories(gt, detected)
    unknown = {r["image_id"] for r in results} - set(gt.getImgIds())
    if unknown:
        raise ValueError(f"detections for images the ground truth lacks: {sorted(unknown)[:5]}")
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            dt = _coco({"images": list(gt.dataset["images"]), "annotations": [],
                        "categories": list(gt.dataset["categories"])})
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def coco_metrics(outputs: Mapping[str, np.ndarray], gt: COCO | Sequence[Mapping[str, Any]] | None = None,
                 classes: Mapping[int, str] | None = None) -> dict[str, float]:
    """``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, ``AP_small``, ``AP_medium``, ``AP_large``, ``AR100`` (recall
    at 100 detections per image) — NaN where COCOeval says -1 (undefined) — and ``num_eval_images``."""
    evaluator = coco_eval(outputs, gt, classes)
    metrics = {name: float(evaluator.stats[i]) for name, i in METRIC_NAMES.items()}
    metrics = {name: (math.nan if value < 0 else value) for name, value in metrics.items()}
    metrics["num_eval_images"] = float(len(evaluator.params.imgIds))
    return metrics
