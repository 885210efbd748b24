"""DETR's augmentation: seeded per sample, boxes that follow the pixels through crop, resize and flip, padded
fixed-shape batches with normalised cxcywh targets, a deterministic evaluation resize."""

import io
import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from components.data.loading.detection_augment import (
    DETR_COCO, DetectionAugmentConfig, augment_detection_sample, detection_batch, eval_detection_sample, map_boxes,
    resized_size,
)

SMALL = DetectionAugmentConfig(scales=(64, 80, 96), max_size=128, crop_resize_scales=(120, 150), min_crop=50,
                               max_crop=110, pad_to=128)
RECT = (50.0, 40.0, 120.0, 100.0)  # the red rectangle of scene(), xyxy


def scene(width: int = 200, height: int = 150) -> Image.Image:
    """Black, with a red rectangle at RECT and a blue one at (150, 10)-(190, 50)."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = (int(v) for v in RECT)
    pixels[y0:y1, x0:x1] = (255, 0, 0)
    pixels[10:50, 150:190] = (0, 0, 255)
    return Image.fromarray(pixels)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def meta(image_id: int, boxes_xywh, labels, crowd=None, size=(200, 150)) -> dict:
    n = len(boxes_xywh)
    return {"image_id": image_id, "file_name": f"{image_id}.jpg", "width": size[0], "height": size[1],
            "original_width": size[0], "original_height": size[1], "boxes": [list(b) for b in boxes_xywh],
            "category_ids": list(labels), "iscrowd": list(crowd or [0] * n),
            "areas": [b[2] * b[3] for b in boxes_xywh], "annotation_ids": list(range(1, n + 1))}


def red_extent(img: Image.Image):
    """(x0, y0, x1, y1) of the mostly-red pixels (pixel edges), or None."""
    a = np.asarray(img).astype(int)
    red = (a[..., 0] > 127) & (a[..., 2] < 128)
    if not red.any():
        return None
    ys, xs = np.nonzero(red)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_same_seed_same_sample_different_seed_different():
    cfg = replace(SMALL, colour_jitter=0.4)
    boxes, labels = np.array([RECT]), np.array([3])
    runs = [augment_detection_sample(scene(), boxes, labels, np.random.default_rng([7, e, 1]), cfg) for e in (0, 0, 1)]
    assert np.array_equal(np.asarray(runs[0].image), np.asarray(runs[1].image))
    assert np.array_equal(runs[0].boxes, runs[1].boxes)
    assert (runs[0].image.size != runs[2].image.size or not np.array_equal(runs[0].boxes, runs[2].boxes)
            or not np.array_equal(np.asarray(runs[0].image), np.asarray(runs[2].image)))


def test_boxes_follow_the_pixels_through_crop_resize_and_flip():
    boxes, labels = np.array([RECT, (150, 10, 190, 50)]), np.array([3, 5])
    seen = {"crop_cut": 0, "dropped": 0, "flipped": 0, "whole": 0}
    for seed in range(40):
        cfg = SMALL if seed % 4 else replace(SMALL, crop_prob=0.0)
        out = augment_detection_sample(scene(), boxes, labels, np.random.default_rng(seed), cfg)
        w, h = out.image.size
        assert max(w, h) <= cfg.max_size and (min(w, h) in cfg.scales or max(w, h) == cfg.max_size)
        assert np.all(out.boxes >= 0) and np.all(out.boxes[:, [0, 2]] <= w) and np.all(out.boxes[:, [1, 3]] <= h)
        extent = red_extent(out.image)
        if 3 not in out.labels.tolist():
            assert extent is None
            seen["dropped"] += 1
            continue
        box = out.boxes[out.labels.tolist().index(3)]
        assert extent is not None
        assert np.allclose(extent, box, atol=1.5), (seed, extent, box)
        if cfg.crop_prob == 0:  # the whole picture: the rectangle's centre (85 of 200) moves right when flipped
            seen["flipped" if (box[0] + box[2]) / 2 > w / 2 else "whole"] += 1
        elif min(box[0], box[1]) == 0 or box[2] == w or box[3] == h:
            seen["crop_cut"] += 1
    assert all(seen.values()), seen  # each case happened


def test_crop_clips_boxes_and_drops_those_outside_with_their_labels():
    boxes = np.array([[10, 10, 30, 30], [40, 40, 80, 80], [90, 0, 120, 20], [50, 0, 50, 60]], dtype=np.float64)
    out, labels = map_boxes(boxes, np.array([1, 2, 3, 4]), (20, 20, 60, 60), (80, 80), flip=False)
    assert labels.tolist() == [1, 2]  # [3] lies outside, [4] has no width
    assert np.allclose(out, [[0, 0, 20, 20], [40, 40, 80, 80]])
    flipped, _ = map_boxes(boxes, np.array([1, 2, 3, 4]), (20, 20, 60, 60), (80, 80), flip=True)
    assert np.allclose(flipped, [[60, 0, 80, 20], [0, 40, 40, 80]])


def test_batch_is_padded_with_a_mask_and_normalised_cxcywh_targets():
    images = [encode(scene()), encode(scene(120, 200)), encode(scene(90, 90), "JPEG")]
    metas = [meta(11, [(50, 40, 70, 60), (150, 10, 40, 40), (0, 0, 200, 150)], [3, 5, 1], crowd=[0, 0, 1]),
             meta(12, [(50, 40, 20, 30)], [7], size=(120, 200)),
             json.dumps(meta(13, [], [], size=(90, 90))).encode()]
    rngs = [np.random.default_rng([1, 0, i]) for i in (11, 12, 13)]
    out = detection_batch(images, metas, rngs, SMALL, max_objects=4)
    p = SMALL.pad_to
    assert out["image"].shape == (3, 3, p, p) and out["image"].dtype == np.float32
    assert out["mask"].shape == (3, p, p) and out["mask"].dtype == bool
    assert out["boxes"].shape == (3, 4, 4) and out["labels"].shape == (3, 4)
    assert out["image_id"].tolist() == [11, 12, 13]
    assert out["orig_size"].tolist() == [[150, 200], [200, 120], [90, 90]]
    for i, (h, w) in enumerate(out["image_size"].tolist()):
        assert not out["mask"][i, :h, :w].any() and out["mask"][i].sum() == p * p - h * w
        assert not out["image"][i][:, out["mask"][i]].any()  # padding is 0, the normalised mean
        k = out["num_boxes"][i]
        assert np.all((out["boxes"][i, :k] >= 0) & (out["boxes"][i, :k] <= 1)) and not out["boxes"][i, k:].any()
    assert 1 not in out["labels"][0, : out["num_boxes"][0]].tolist()  # the crowd box is no training target
    assert out["num_boxes"][2] == 0 and "gt_boxes" not in out


def test_more_objects_than_max_keep_the_first_and_are_counted():
    boxes = [(10 * i, 10, 8, 8) for i in range(6)]
    out = detection_batch([encode(scene())], [meta(1, boxes, [1, 2, 3, 4, 5, 6])], None, SMALL, max_objects=4,
                          ground_truth=False)
    assert out["num_boxes"].tolist() == [4] and out["num_truncated"].tolist() == [2]
    assert out["labels"][0].tolist() == [1, 2, 3, 4]


def test_evaluation_is_deterministic_and_carries_every_annotation():
    images = [encode(scene()), encode(scene(120, 200))]
    metas = [meta(11, [(50, 40, 70, 60), (0, 0, 200, 150)], [3, 1], crowd=[0, 1]),
             meta(12, [(50, 40, 20, 30)], [7], size=(120, 200))]
    a = detection_batch(images, metas, None, SMALL, max_objects=4)
    b = detection_batch(images, metas, None, SMALL, max_objects=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["image_size"].tolist() == [[96, 128], [128, 77]]  # shorter side 96, longer capped at 128
    assert resized_size(120, 200, 96, 128) == (77, 128)
    h, w = a["image_size"][0]
    cx, cy, bw, bh = a["boxes"][0, 0] * [w, h, w, h]
    assert np.allclose([cx - bw / 2, cy - bh / 2, bw, bh], np.array([50, 40, 70, 60]) * 128 / 200, atol=1e-4)
    assert a["num_boxes"].tolist() == [1, 1] and a["num_gt"].tolist() == [2, 1]
    assert a["gt_iscrowd"][0, :2].tolist() == [0, 1] and a["gt_boxes"][0, 1].tolist() == [0, 0, 200, 150]
    with pytest.raises(ValueError, match="max_gt"):
        detection_batch(images, metas, None, SMALL, max_objects=4, max_gt=1)
    img = eval_detection_sample(scene(), np.array([RECT]), np.array([3]), SMALL).image
    assert np.allclose(red_extent(img), np.array(RECT) * 128 / 200, atol=1.5)


def test_config_is_checked_and_validates_strictly():
    assert DETR_COCO.eval_side == 800 and SMALL.eval_side == 96
    with pytest.raises(ValueError, match="pad_to"):
        DetectionAugmentConfig(max_size=500, pad_to=400)
    with pytest.raises(ValueError, match="min_crop"):
        DetectionAugmentConfig(min_crop=300, max_crop=200)
    with pytest.raises(ValidationError, match="scale"):
        TypeAdapter(DetectionAugmentConfig).validate_python({"scale": [1]})
    assert TypeAdapter(DetectionAugmentConfig).validate_python({"scales": [32, 48], "max_size": 64,
                                                                "pad_to": 64}).scales == (32, 48)
