"""The embedded detection set: scenes of scikit-learn's digits, written as a COCO set (``tvp ingest coco --sample``).

Each scene is a grey ``canvas`` × ``canvas`` picture (96 px by default), black like the digits themselves, with
1 to 4 digits (the count uniform) pasted at random places and sizes (squares of 24 to 48 px, the demo's
``digit_image`` resampling). The sizes suit a stride-16 detector: a digit's ink spans two to three cells of
its feature map (smaller digits, down to one cell, left a tiny DETR unable to learn them in minutes). Squares never overlap (they may touch): each is drawn anew, up to
``PLACEMENT_TRIES`` times, until it fits among those already placed; one that finds no room is left out, so a
crowded draw may hold fewer digits than it drew. Scenes are a function of the seed alone.

- Box: the digit's ink, the tight box of the pasted square's pixels at least ``INK_LEVEL`` (of 255), not the
  whole square (whose margins are empty, and COCO's boxes are tight): COCO ``[x, y, w, h]`` in pixels, where a
  box over pixel columns 3…9 is x=3, w=7. ``area`` is the box's area; ``iscrowd`` is 0.
- Categories: the ten digits, id = digit + 1 (``zero`` is 1, ``nine`` is 10; names ``CLASS_NAMES``), 1-based as
  COCO's, so that 0 stays free for the tools that reserve it for the background.
- Splits: a seeded fifth of the 1,797 digit pictures is held out; the training scenes paste only the others and
  the held-out scenes only those, so evaluation measures digits never seen in training.

Written under ``location`` (a folder or object storage, like the shards): ``images/NNNNNN.png`` (the image id,
zero-padded; training ids 1 … n_train, held-out ids after them, so the two never collide),
``instances_train.json`` and ``instances_val.json``. A hidden marker ``.complete``, written last, says the set is
whole: a rerun with the same settings writes nothing, an interrupted write is redone.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image

from components.data.ingest.digits_demo_data import CLASS_NAMES, digit_image
from components.data.shards.shard_store import ShardStore

COMPLETE_MARKER = ".complete"
ANNOTATION_FILES = {"train": "instances_train.json", "val": "instances_val.json"}
IMAGES_FOLDER = "images"
INK_LEVEL = 64  # a pasted pixel at least this bright is ink: above bicubic's faint ringing around the strokes
PLACEMENT_TRIES = 50
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class SceneSpec:
    """How the sample is drawn; every field changes the bytes (and is recorded in the marker)."""

    train_scenes: int = 1000
    val_scenes: int = 200
    canvas: int = 96  # side of each scene, pixels
    min_digit: int = 24  # side of a pasted digit square, pixels, both ends included
    max_digit: int = 48
    max_digits: int = 4  # digits per scene: uniform in 1 … max_digits
    seed: int = 0


def category_id(digit: int) -> int:
    return digit + 1


def scene_categories() -> list[dict[str, Any]]:
    return [{"id": category_id(d), "name": name, "supercategory": "digit"} for d, name in enumerate(CLASS_NAMES)]


def digit_pools(num_digits: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of the digit pictures each split pastes: a seeded ``HELDOUT_FRACTION`` for ``val``, the rest
    for ``train``."""
    order = np.random.default_rng([seed, 0]).permutation(num_digits)
    cut = round(num_digits * HELDOUT_FRACTION)
    return {"val": np.sort(order[:cut]), "train": np.sort(order[cut:])}


def _ink_box(patch: np.ndarray, x: int, y: int) -> list[int]:
    """The tight box ([x, y, w, h]) of ``patch``'s ink, placed at (x, y); the whole square if it has none."""
    rows, cols = np.nonzero(patch >= INK_LEVEL)
    if not len(rows):
        return [x, y, patch.shape[1], patch.shape[0]]
    return [x + int(cols.min()), y + int(rows.min()), int(cols.max() - cols.min()) + 1,
            int(rows.max() - rows.min()) + 1]


def _overlaps(square: tuple[int, int, int], placed: list[tuple[int, int, int]]) -> bool:
    x, y, side = square
    return any(x < px + ps and px < x + side and y < py + ps and py < y + side for px, py, ps in placed)


def compose_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, pool: np.ndarray,
                  spec: SceneSpec) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One scene: (grey pixels canvas × canvas, uint8; its digits as ``{"category_id", "bbox", "digit_index"}``)."""
    canvas = np.zeros((spec.canvas, spec.canvas), np.uint8)
    placed: list[tuple[int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, spec.max_digits + 1))):
        index = int(pool[rng.integers(len(pool))])
        for _ in range(PLACEMENT_TRIES):
            side = int(rng.integers(spec.min_digit, spec.max_digit + 1))
            x, y = (int(v) for v in rng.integers(0, spec.canvas - side + 1, size=2))
            if not _overlaps((x, y, side), placed):
                break
        else:
            continue  # no room left for this one
        placed.append((x, y, side))
        patch = np.asarray(digit_image(images[index], side))
        canvas[y:y + side, x:x + side] = patch
        objects.append({"category_id": category_id(int(labels[index])), "bbox": _ink_box(patch, x, y),
                        "digit_index": index})
    return canvas, objects


def digit_scenes(spec: SceneSpec = SceneSpec()) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file of the sample: the PNGs, then the two annotation files."""
    from sklearn.datasets import load_digits  # heavy import, needed only here

    digits = load_digits()
    pools = digit_pools(len(digits.target), spec.seed)
    image_id = annotation_id = 0
    for split, count in (("train", spec.train_scenes), ("val", spec.val_scenes)):
        rng = np.random.default_rng([spec.seed, 1 if split == "train" else 2])
        images, annotations = [], []
        for _ in range(count):
            image_id += 1
            pixels, objects = compose_scene(rng, digits.images, digits.target, pools[split], spec)
            file_name = f"{image_id:06d}.png"
            png = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(png, format="PNG")
            yield f"{IMAGES_FOLDER}/{file_name}", png.getvalue()
            images.append({"id": image_id, "file_name": file_name, "width": spec.canvas, "height": spec.canvas})
            for obj in objects:
                annotation_id += 1
                x, y, w, h = obj["bbox"]
                annotations.append({"id": annotation_id, "image_id": image_id, "category_id": obj["category_id"],
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                                    "digit_index": obj["digit_index"]})  # which scikit-learn picture: for audits
        info = {"description": f"tvp digit scenes ({split}): scikit-learn's digits pasted on "
                               f"{spec.canvas}-px canvases", "spec": spec.__dict__}
        document = {"info": info, "images": images, "annotations": annotations, "categories": scene_categories()}
        yield ANNOTATION_FILES[split], json.dumps(document, indent=None, separators=(",", ":")).encode()


def write_digit_scenes(location: str, spec: SceneSpec = SceneSpec()) -> str:
    """Write the sample at ``location`` (a folder or ``s3://…``) unless it is there whole; return ``location``."""
    store = ShardStore(location)
    marker = json.dumps(spec.__dict__, sort_keys=True).encode()
    if store.exists(COMPLETE_MARKER) and store.read_bytes(COMPLETE_MARKER) == marker:
        return location
    store.makedirs(IMAGES_FOLDER)
    for name, data in digit_scenes(spec):
        # Plain writes, not ShardStore's fsynced ones (seconds for a thousand files): the marker vouches for them.
        with store.fs.open_output_stream(store.path(name)) as f:
            f.write(data)
    store.write_bytes(COMPLETE_MARKER, marker)
    return location
