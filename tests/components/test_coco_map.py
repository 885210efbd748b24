"""COCO mAP from per-sample outputs: perfect predictions, agreement with pycocotools run directly, the same
metrics whatever the batch split, the results format, and the detection pictures."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from components.data.loading.detection_augment import ground_truth_columns, parse_annotations
from components.evaluation.coco_map import coco_metrics, coco_results_json, detection_outputs
from components.viz.detections import decoder_attention_picture, detections_picture

NUM_CLASSES = 91  # COCO: category ids 1..90, class index = id, 90 + 1 no-object → 92 logits


def meta(image_id, boxes, labels, crowd=None, areas=None, size=(200, 150)):
    n = len(boxes)
    return {"image_id": image_id, "width": size[0], "height": size[1], "boxes": [list(map(float, b)) for b in boxes],
            "category_ids": list(labels), "iscrowd": list(crowd or [0] * n),
            "areas": list(areas) if areas is not None else [float(b[2] * b[3]) for b in boxes],
            "annotation_ids": list(range(100 * image_id, 100 * image_id + n))}


METAS = [
    meta(5, [(10, 10, 100, 80), (120, 20, 20, 20), (0, 0, 200, 150)], [1, 90, 1], crowd=[0, 0, 1]),
    meta(9, [(50, 40, 60, 60), (5, 100, 10, 10)], [7, 7]),
    meta(2, [], []),  # no annotations: its detections are false positives
    meta(14, [(30, 30, 120, 100)], [90], size=(160, 160)),
]


def gt_columns(metas, max_gt=4):
    cols = ground_truth_columns([parse_annotations(m) for m in metas], max_gt, [m["image_id"] for m in metas])
    cols["image_id"] = np.array([m["image_id"] for m in metas], dtype=np.int64)
    return cols


def perfect_model_outputs(metas, queries=6):
    """DETR-style logits and normalised cxcywh boxes that name every non-crowd annotation; the rest no-object."""
    logits = torch.full((len(metas), queries, NUM_CLASSES + 1), -10.0)
    logits[..., -1] = 10.0
    boxes = torch.full((len(metas), queries, 4), 0.5)
    for i, m in enumerate(metas):
        ann = parse_annotations(m)
        for q, (box, label) in enumerate(zip(ann.boxes_xywh[ann.iscrowd == 0], ann.labels[ann.iscrowd == 0])):
            x, y, w, h = box
            logits[i, q, -1], logits[i, q, label] = -10.0, 10.0
            boxes[i, q] = torch.tensor([(x + w / 2) / m["width"], (y + h / 2) / m["height"], w / m["width"],
                                        h / m["height"]])
    orig_size = torch.tensor([[m["height"], m["width"]] for m in metas])
    return logits, boxes, orig_size


def outputs_of(metas, logits, boxes, orig_size, top_k=100):
    gt = {k: torch.from_numpy(v) for k, v in gt_columns(metas).items()}
    out = detection_outputs(logits, boxes, orig_size, gt["image_id"], top_k, ground_truth=gt)
    return {k: v.numpy() for k, v in out.items()}


def concat(*parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_perfect_predictions_score_one():
    out = outputs_of(METAS, *perfect_model_outputs(METAS))
    assert out["det_boxes"].shape == (4, 6, 4) and out["num_detections"].tolist() == [6, 6, 6, 6]
    metrics = coco_metrics(out)
    for name in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    assert metrics["num_eval_images"] == 4
    assert coco_metrics(out, gt=METAS) == metrics  # the eval set's metas as ground truth: the same


def test_partial_case_equals_pycocotools_run_directly():
    dets = {  # integer pixel boxes (exact in float32), xyxy: hits, a loose hit, a wrong class, a false positive
        5: [((10, 10, 110, 90), 1, 0.9), ((118, 22, 138, 40), 90, 0.8), ((0, 0, 190, 150), 1, 0.3)],
        9: [((50, 40, 110, 100), 3, 0.95), ((55, 45, 110, 100), 7, 0.6), ((5, 100, 15, 110), 7, 0.2)],
        2: [((20, 20, 60, 60), 7, 0.7)],
        14: [((40, 40, 140, 120), 90, 0.5)],
    }
    k = 3
    out = gt_columns(METAS)
    out["det_boxes"] = np.zeros((4, k, 4), np.float32)
    out["det_labels"], out["det_scores"] = np.zeros((4, k), np.int64), np.zeros((4, k), np.float32)
    out["num_detections"] = np.array([len(dets[m["image_id"]]) for m in METAS], np.int64)
    results = []
    for i, m in enumerate(METAS):
        for j, (box, label, score) in enumerate(dets[m["image_id"]]):
            out["det_boxes"][i, j], out["det_labels"][i, j], out["det_scores"][i, j] = box, label, score
            x0, y0, x1, y1 = box
            results.append({"image_id": m["image_id"], "category_id": label, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "score": float(np.float32(score))})
    annotations = []
    for m in METAS:
        for box, label, crowd, area in zip(m["boxes"], m["category_ids"], m["iscrowd"], m["areas"]):
            annotations.append({"id": len(annotations) + 1, "image_id": m["image_id"], "bbox": box,
                                "category_id": label, "iscrowd": crowd, "area": area})
    gt = COCO()
    gt.dataset = {"images": [{"id": m["image_id"]} for m in METAS], "annotations": annotations,
                  "categories": [{"id": c} for c in (1, 3, 7, 90)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        direct = COCOeval(gt, gt.loadRes(results), "bbox")
        direct.evaluate(), direct.accumulate(), direct.summarize()
    metrics = coco_metrics(out)
    expected = dict(zip(["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"], direct.stats[:6]))
    assert 0.2 < expected["AP"] < 0.9  # a partial case
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-12), name
    assert metrics == coco_metrics(out, gt=METAS)


def test_metrics_do_not_depend_on_the_batch_split_or_order():
    generator = torch.Generator().manual_seed(0)
    logits, boxes, orig_size = perfect_model_outputs(METAS)
    logits = logits + 2 * torch.randn(logits.shape, generator=generator)
    boxes = (boxes + 0.08 * torch.randn(boxes.shape, generator=generator)).clamp(0.01, 0.99)
    whole = outputs_of(METAS, logits, boxes, orig_size, top_k=4)
    first = outputs_of(METAS[:1], logits[:1], boxes[:1], orig_size[:1], top_k=4)
    rest = outputs_of(METAS[1:], logits[1:], boxes[1:], orig_size[1:], top_k=4)
    again = outputs_of(METAS[1:2], logits[1:2], boxes[1:2], orig_size[1:2], top_k=4)  # a sampler's repeat
    metrics = coco_metrics(whole)
    assert 0 < metrics["AP50"] < 1
    assert coco_metrics(concat(rest, again, first)) == metrics


def test_undefined_values_are_nan_and_no_detections_score_zero():
    out = outputs_of(METAS[3:], *perfect_model_outputs(METAS[3:]))  # one large object only
    metrics = coco_metrics(out)
    assert metrics["AP"] == pytest.approx(1.0) and math.isnan(metrics["AP_small"])
    out["num_detections"][:] = 0
    assert coco_metrics(out)["AP"] == 0.0


def test_results_json_is_coco_results_format():
    out = outputs_of(METAS, *perfect_model_outputs(METAS, queries=3), top_k=2)
    results = json.loads(json.dumps(coco_results_json(out)))
    assert len(results) == 8 and set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert [r["image_id"] for r in results] == [2, 2, 5, 5, 9, 9, 14, 14]
    first = next(r for r in results if r["image_id"] == 5)
    assert first["category_id"] == 1 and first["bbox"] == pytest.approx([10, 10, 100, 80], abs=1e-3)
    gt = COCO()
    gt.dataset = {"images": [{"id": m["image_id"]} for m in METAS], "annotations": [],
                  "categories": [{"id": c} for c in range(1, 91)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        loaded = gt.loadRes(results)
    assert len(loaded.getAnnIds()) == 8


def test_pictures_have_the_expected_size():
    images = [np.zeros((150, 200, 3), np.uint8), np.zeros((150, 200, 3), np.uint8), np.zeros((160, 160, 3), np.uint8)]
    out = outputs_of(METAS[:2] + METAS[3:], *perfect_model_outputs(METAS[:2] + METAS[3:]))
    sheet = detections_picture(images, out, {1: "person", 7: "train", 90: "toothbrush"}, columns=2, side=160)
    assert sheet.size == (2 * 164 + 4, 2 * 178 + 4)
    assert np.asarray(sheet)[..., 0].max() == 255  # drawn in colour
    attention = np.random.default_rng(0).random((3, 6, 8))
    picture = decoder_attention_picture(images[0], attention, np.array([[10, 10, 50, 50]] * 3), ["a", "b", "c"],
                                        extent=(5, 7), columns=4, side=96)
    assert picture.size == (4 * 100 + 4, 1 * 114 + 4)
