"""Training-time augmentation for detectors (DETR's recipe): images and their boxes together. Numpy and PIL only.

One sample's path through ``augment_detection_sample``:

- **random crop** with probability ``crop_prob`` (DETR's RandomSelect, 0.5):
  the image is resized so its shorter side is one of ``crop_resize_scales``
  (no cap on the longer side), a crop of width and height each uniform in
  [``min_crop``, ``max_crop``] (and no larger than that resized image) is cut
  at a uniform position, and the crop goes on to the multi-scale resize.
- **multi-scale resize**: the shorter side becomes one of ``scales``
  (uniform), unless the longer side would then pass ``max_size``, in which
  case the longer side becomes ``max_size`` (DETR's rule). Sides are rounded
  to whole pixels; the aspect ratio is kept up to that rounding.
- **horizontal flip** with probability ``hflip``.
- **colour jitter** (off by default; DETR has none): brightness, contrast and
  saturation, in that order, each by a factor 1 + v·0.9 with v uniform in
  [-``colour_jitter``, ``colour_jitter``] (image_augment's enhancement ops).
- **normalisation**: pixels / 255, less ``mean``, over ``std``.

The geometric steps are one resample: the crop is a box in the source
image's coordinates and PIL resizes that box straight to the output size, so
the intermediate resize is never materialised (and cannot blur twice). The
flip is applied to the output; a uniform crop position is symmetric, so this
draws the same distribution as DETR's flip-first order.

Boxes (xyxy, pixels) follow exactly: clipped to the crop (the whole image when
there is none), dropped with their labels when no area is left (DETR's rule:
width and height both > 0), mapped by the same affine map as the pixels (a
pixel's centre ``x + 0.5`` maps to ``(x + 0.5 - left) · out_w / crop_w``),
mirrored by ``x → out_w - x``.

Batches (``detection_batch``) are padded to a fixed canvas ``pad_to`` × ``pad_to``:
the image sits at the top-left, the rest of ``image`` is 0 (the normalised
mean colour) and ``mask`` is True there. Since every resize caps the longer
side at ``max_size``, ``pad_to >= max_size`` always holds the image.

Reproducibility: sample i draws from ``rngs[i]`` alone, a fixed number of
uniforms in a fixed order (flip, crop or not, scale, crop scale, crop width,
crop height, crop x, crop y; then three for the jitter when it is on),
whatever branch is taken: the same sample with the same generator (seeded by
seed, epoch and sample id) gets the same pixels and boxes in any batch.

The defaults are a small CPU-sized version of DETR's recipe (every length
× 0.32); ``DETR_COCO`` is the paper's (shorter side 480-800, at most 1333).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, NamedTuple, Sequence

import numpy as np
from PIL import Image

from components.data.loading.image_augment import (
    IMAGENET_MEAN, IMAGENET_STD, _Normaliser, decode_rgb, randaugment_op,
)
from components.tasks.targets import pad_items

_UNIFORMS = 8  # flip, crop?, scale, crop scale, crop width, crop height, crop x, crop y
_JITTER_OPS = ("brightness", "contrast", "color")  # image_augment's enhancement ops; "color" is saturation


@dataclass(frozen=True)
class DetectionAugmentConfig:
    """A detector's training augmentation, evaluation resize and padded canvas (defaults: DETR's, scaled to CPU)."""

    scales: tuple[int, ...] = (160, 176, 192, 208, 224, 240, 256)  # shorter side after resizing, drawn uniformly
    max_size: int = 384  # the longer side never exceeds this (DETR: 1333)
    crop_prob: float = 0.5  # probability of the random-crop branch; 0 = never crop
    crop_resize_scales: tuple[int, ...] = (128, 160, 192)  # shorter side before cropping (DETR: 400, 500, 600)
    min_crop: int = 120  # smallest crop side in pixels of that resized image (DETR: 384)
    max_crop: int = 192  # largest crop side in pixels of that resized image (DETR: 600)
    hflip: float = 0.5  # probability of a horizontal flip
    colour_jitter: float = 0.0  # brightness/contrast/saturation strength in [0, 1]; 0 = off (DETR's)
    eval_scale: int | None = None  # evaluation's shorter side (then capped by max_size); None = max(scales)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"  # resampling of every resize (torchvision's default)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean of pixels in [0, 1], subtracted
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel standard deviation, divided by
    pad_to: int = 384  # side P of the fixed canvas every image is padded to: image (3, P, P), mask (P, P)

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}

    def __post_init__(self):
        problems = []
        if not self.scales or min(self.scales) < 1:
            problems.append(f"scales is {self.scales}: give at least one positive side")
        if self.crop_prob > 0 and (not self.crop_resize_scales or min(self.crop_resize_scales) < 1):
            problems.append(f"crop_resize_scales is {self.crop_resize_scales}: give at least one positive side")
        if not 1 <= self.min_crop <= self.max_crop:
            problems.append(f"min_crop {self.min_crop} and max_crop {self.max_crop}: need 1 <= min_crop <= max_crop")
        for name in ("crop_prob", "hflip", "colour_jitter"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} is {getattr(self, name)}: it must lie in [0, 1]")
        if self.eval_scale is not None and self.eval_scale < 1:
            problems.append(f"eval_scale is {self.eval_scale}: it must be positive")
        if self.max_size < 1:
            problems.append(f"max_size is {self.max_size}: it must be positive")
        if self.pad_to < self.max_size:
            problems.append(f"pad_to is {self.pad_to}, smaller than max_size {self.max_size}: images would not fit")
        if min(self.std) <= 0:
            problems.append(f"std is {self.std}: every channel's must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def eval_side(self) -> int:
        return self.eval_scale if self.eval_scale is not None else max(self.scales)


# DETR's COCO recipe at full size (Carion et al. 2020, and its released training transforms).
DETR_COCO = DetectionAugmentConfig(scales=tuple(range(480, 801, 32)), max_size=1333,
                                   crop_resize_scales=(400, 500, 600), min_crop=384, max_crop=600,
                                   eval_scale=800, pad_to=1333)


class DetectionSample(NamedTuple):
    image: Image.Image  # RGB, (out_w, out_h) pixels
    boxes: np.ndarray  # (k, 4) float32 xyxy in the output image's pixels
    labels: np.ndarray  # (k,) int64, the boxes that survived, in their input order


# -- geometry ----------------------------------------------------------------------------------------------------

def resized_size(width: float, height: float, shorter: int, max_size: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``shorter``, or the longer side ``max_size`` when that is smaller."""
    factor = min(shorter / min(width, height), max_size / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def _pick(u: float, options: Sequence[int]) -> int:
    return options[min(int(u * len(options)), len(options) - 1)]


def _integer_between(u: float, low: int, high: int) -> int:
    """Uniform integer in [low, high] from a uniform u in [0, 1)."""
    return low + min(int(u * (high - low + 1)), high - low)


def _crop_box(width: int, height: int, u: np.ndarray, cfg: DetectionAugmentConfig) -> tuple[float, ...]:
    """DETR's crop as (left, top, right, bottom) in source pixels, from uniforms (crop scale, w, h, x, y).

    The image resized to a shorter side from ``crop_resize_scales`` is (iw, ih); the crop's integer size and
    position are drawn there and mapped back by that resize's per-axis factors."""
    resized_w, resized_h = resized_size(width, height, _pick(u[0], cfg.crop_resize_scales), 10 ** 9)
    crop_w = _integer_between(u[1], min(cfg.min_crop, resized_w), min(cfg.max_crop, resized_w))
    crop_h = _integer_between(u[2], min(cfg.min_crop, resized_h), min(cfg.max_crop, resized_h))
    x = _integer_between(u[3], 0, resized_w - crop_w)
    y = _integer_between(u[4], 0, resized_h - crop_h)
    fx, fy = resized_w / width, resized_h / height
    return x / fx, y / fy, (x + crop_w) / fx, (y + crop_h) / fy


def map_boxes(boxes_xyxy: np.ndarray, labels: np.ndarray, box: Sequence[float], size: tuple[int, int],
              flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the source region ``box`` (left, top, right, bottom), those with no area left dropped,
    the rest mapped to an output of ``size`` (w, h) and mirrored when ``flip``: (k, 4) float32, (k,) int64."""
    left, top, right, bottom = box
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    b = np.stack([np.clip(b[:, 0], left, right), np.clip(b[:, 1], top, bottom),
                  np.clip(b[:, 2], left, right), np.clip(b[:, 3], top, bottom)], axis=1)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    b = b[keep]
    sx, sy = size[0] / (right - left), size[1] / (bottom - top)
    b = (b - [left, top, left, top]) * [sx, sy, sx, sy]
    if flip:
        b = np.stack([size[0] - b[:, 2], b[:, 1], size[0] - b[:, 0], b[:, 3]], axis=1)
    return b.astype(np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64).reshape(-1)[keep]


def _resample(cfg: DetectionAugmentConfig) -> Image.Resampling:
    return Image.Resampling[cfg.interpolation.upper()]


# -- one sample --------------------------------------------------------------------------------------------------

def augment_detection_sample(img: Image.Image, boxes_xyxy: np.ndarray, labels: np.ndarray,
                             rng: np.random.Generator, cfg: DetectionAugmentConfig) -> DetectionSample:
    """One RGB image and its (k, 4) xyxy pixel boxes and (k,) labels, cropped, resized, flipped and jittered
    with ``rng``'s draws (``_UNIFORMS`` uniforms, then 3 more when jitter is on)."""
    u = rng.random(_UNIFORMS)
    width, height = img.size
    box: tuple[float, ...] = (0.0, 0.0, float(width), float(height))
    if cfg.crop_prob > 0 and u[1] < cfg.crop_prob:
        box = _crop_box(width, height, u[3:8], cfg)
    size = resized_size(box[2] - box[0], box[3] - box[1], _pick(u[2], cfg.scales), cfg.max_size)
    flip = cfg.hflip > 0 and u[0] < cfg.hflip
    whole = box == (0.0, 0.0, float(width), float(height))
    out = img if whole and size == img.size else img.resize(size, _resample(cfg), box=box)
    if flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if cfg.colour_jitter > 0:
        out = _jitter(out, rng.random(len(_JITTER_OPS)), cfg.colour_jitter)
    boxes, labels = map_boxes(boxes_xyxy, labels, box, size, flip)
    return DetectionSample(out, boxes, labels)


def _jitter(img: Image.Image, u: np.ndarray, strength: float) -> Image.Image:
    for name, draw in zip(_JITTER_OPS, u.tolist()):
        level = (2.0 * draw - 1.0) * strength  # in [-strength, strength]; factor 1 + 0.9·level
        img = randaugment_op(img, name, 10.0 * abs(level), negative=level < 0)
    return img


def eval_detection_sample(img: Image.Image, boxes_xyxy: np.ndarray, labels: np.ndarray,
                          cfg: DetectionAugmentConfig) -> DetectionSample:
    """Deterministic: the shorter side resized to ``eval_side`` (longer capped at ``max_size``); no crop, flip
    or jitter. Boxes are clipped to the image and mapped like the training ones."""
    box = (0.0, 0.0, float(img.width), float(img.height))
    size = resized_size(img.width, img.height, cfg.eval_side, cfg.max_size)
    out = img if size == img.size else img.resize(size, _resample(cfg))
    boxes, labels = map_boxes(boxes_xyxy, labels, box, size, False)
    return DetectionSample(out, boxes, labels)


# -- shard metadata ----------------------------------------------------------------------------------------------

class Annotations(NamedTuple):
    boxes_xywh: np.ndarray  # (n, 4) float64, COCO's top-left and size, stored-image pixels
    labels: np.ndarray  # (n,) int64 category ids
    iscrowd: np.ndarray  # (n,) int64, 0 or 1
    areas: np.ndarray  # (n,) float64, the annotation's area (segment area for COCO), for the area ranges


def parse_annotations(meta: Mapping[str, Any] | bytes | str) -> Annotations:
    """A sample's ``.json`` (parsed, or its bytes): boxes, category ids, crowd flags (default 0) and areas
    (default: the box's w·h)."""
    if isinstance(meta, (bytes, str)):
        meta = json.loads(meta)
    boxes = np.asarray(meta.get("boxes") or [], dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    labels = np.asarray(meta.get("category_ids") or [], dtype=np.int64).reshape(-1)
    iscrowd = np.asarray(meta.get("iscrowd") or [0] * n, dtype=np.int64).reshape(-1)
    areas = np.asarray(meta.get("areas") or (boxes[:, 2] * boxes[:, 3]).tolist(), dtype=np.float64).reshape(-1)
    if not len(labels) == len(iscrowd) == len(areas) == n:
        raise ValueError(f"image {meta.get('image_id')}: {n} boxes but {len(labels)} category ids, "
                         f"{len(iscrowd)} crowd flags and {len(areas)} areas")
    return Annotations(boxes, labels, iscrowd, areas)


def training_targets(ann: Annotations) -> tuple[np.ndarray, np.ndarray]:
    """DETR's targets: crowd regions left out; xyxy boxes (clipping and dropping empty ones happen in the
    augmentation)."""
    keep = ann.iscrowd == 0
    b = ann.boxes_xywh[keep]
    return np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1), ann.labels[keep]


# -- batches -----------------------------------------------------------------------------------------------------

GROUND_TRUTH_COLUMNS = ("gt_boxes", "gt_labels", "gt_iscrowd", "gt_areas", "num_gt")


def detection_batch(encoded_jpgs: Sequence[bytes], metas: Sequence[Mapping[str, Any] | bytes | str],
                    rngs: Sequence[np.random.Generator] | None, cfg: DetectionAugmentConfig, max_objects: int,
                    ground_truth: bool | None = None, max_gt: int | None = None) -> dict[str, np.ndarray]:
    """Encoded images and their ``.json`` metas → fixed-shape model input (B samples, P = ``cfg.pad_to``,
    M = ``max_objects``):

    - ``image`` (B, 3, P, P) float32, normalised, the image at the top-left, 0 elsewhere;
    - ``mask`` (B, P, P) bool, True on padding;
    - ``boxes`` (B, M, 4) float32, normalised cxcywh: relative to the augmented image's (w, h) before padding;
    - ``labels`` (B, M) int64 category ids (the class index is the category id); ``num_boxes`` (B,) int64;
    - ``num_truncated`` (B,) int64: boxes left out because more than M survived (the first M, in annotation
      order, are kept);
    - ``image_size`` (B, 2) int64 (h, w) after augmentation, before padding;
    - ``orig_size`` (B, 2) int64 (h, w) of the stored (decoded) image; ``image_id`` (B,) int64.

    Training targets leave out crowd boxes (DETR's). ``rngs`` holds one generator per sample; None means
    evaluation (``eval_detection_sample``). ``ground_truth`` (default: when ``rngs`` is None) adds the
    evaluation's ground truth, every annotation crowd included, in stored-image pixels, G = ``max_gt``
    (default M): ``gt_boxes`` (B, G, 4) float32 COCO xywh, ``gt_labels`` (B, G) int64, ``gt_iscrowd`` (B, G)
    int64, ``gt_areas`` (B, G) float32, ``num_gt`` (B,) int64. More than G annotations is an error (dropping
    ground truth would change the metric).
    """
    if rngs is not None and len(rngs) != len(encoded_jpgs):
        raise ValueError(f"{len(rngs)} generators for {len(encoded_jpgs)} images: one per image")
    if len(metas) != len(encoded_jpgs):
        raise ValueError(f"{len(metas)} metas for {len(encoded_jpgs)} images: one per image")
    ground_truth = rngs is None if ground_truth is None else ground_truth
    n, p = len(encoded_jpgs), cfg.pad_to
    image = np.zeros((n, 3, p, p), dtype=np.float32)
    mask = np.ones((n, p, p), dtype=bool)
    sizes, orig_sizes, image_ids, boxes, labels, truncated, anns = [], [], [], [], [], [], []
    norm = _Normaliser(cfg)
    for i, (data, meta) in enumerate(zip(encoded_jpgs, metas)):
        if isinstance(meta, (bytes, str)):
            meta = json.loads(meta)
        img = decode_rgb(data)
        ann = parse_annotations(meta)
        target_boxes, target_labels = training_targets(ann)
        if rngs is None:
            sample = eval_detection_sample(img, target_boxes, target_labels, cfg)
        else:
            sample = augment_detection_sample(img, target_boxes, target_labels, rngs[i], cfg)
        w, h = sample.image.size
        norm.into(sample.image, image[i, :, :h, :w])
        mask[i, :h, :w] = False
        boxes.append(_normalised_cxcywh(sample.boxes[:max_objects], w, h))
        labels.append(sample.labels[:max_objects])
        truncated.append(max(0, len(sample.labels) - max_objects))
        sizes.append((h, w))
        orig_sizes.append((img.height, img.width))
        image_ids.append(int(meta["image_id"]))
        anns.append(ann)
    padded_boxes, num_boxes = pad_items(boxes, max_objects)
    out = {
        "image": image, "mask": mask, "boxes": padded_boxes.astype(np.float32),
        "labels": pad_items(labels, max_objects)[0].astype(np.int64), "num_boxes": num_boxes,
        "num_truncated": np.asarray(truncated, dtype=np.int64),
        "image_size": np.asarray(sizes, dtype=np.int64), "orig_size": np.asarray(orig_sizes, dtype=np.int64),
        "image_id": np.asarray(image_ids, dtype=np.int64),
    }
    if ground_truth:
        out.update(ground_truth_columns(anns, max_objects if max_gt is None else max_gt, image_ids))
    return out


def _normalised_cxcywh(boxes_xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
    b = boxes_xyxy.astype(np.float32).reshape(-1, 4)
    centre, size = (b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]
    return (np.concatenate([centre, size], axis=1) / np.float32([width, height, width, height])).astype(np.float32)


def ground_truth_columns(anns: Sequence[Annotations], max_gt: int, image_ids: Sequence[int]
                         ) -> dict[str, np.ndarray]:
    """The ``GROUND_TRUTH_COLUMNS`` of a batch: every annotation, padded to ``max_gt``."""
    for ann, image_id in zip(anns, image_ids):
        if len(ann.labels) > max_gt:
            raise ValueError(f"image {image_id} has {len(ann.labels)} annotations, more than max_gt={max_gt}: "
                             f"raise max_gt (evaluation keeps every annotation)")
    gt_boxes, num_gt = pad_items([a.boxes_xywh.astype(np.float32) for a in anns], max_gt)
    return {
        "gt_boxes": gt_boxes.astype(np.float32),
        "gt_labels": pad_items([a.labels for a in anns], max_gt)[0].astype(np.int64),
        "gt_iscrowd": pad_items([a.iscrowd for a in anns], max_gt)[0].astype(np.int64),
        "gt_areas": pad_items([a.areas.astype(np.float32) for a in anns], max_gt)[0].astype(np.float32),
        "num_gt": num_gt,
    }
