"""COCO instances files (``instances_*.json``): parsing, checking and per-image boxes, and the shard stage's reader.

The file is one JSON object, local or in object storage (``s3://…``, ``gs://…``, through pyarrow's filesystems):

- ``images``: ``{"id": int, "file_name": str, "width": int, "height": int, …}``; ids unique; sizes positive;
- ``categories``: ``{"id": int, "name": str, "supercategory": str (optional), …}``; ids unique, kept as they
  are (COCO's are 1-based and sparse: 1 … 90 for 80 classes);
- ``annotations`` (absent in an image-info file such as COCO's test-dev: every image then has no boxes):
  ``{"id": int, "image_id": int, "category_id": int, "bbox": [x, y, w, h], "area": number (optional),
  "iscrowd": 0|1 (optional, 0)}``. Other keys (``segmentation``, ``info``, ``licenses``) are not read.

A file that breaks this shape (not JSON, a required key missing, a value of the wrong type, duplicate image or
category ids) fails in ``read_coco`` with ``CocoError``: one line naming the entry, before anything is written.

Boxes are COCO's ``[x, y, w, h]``: the top-left corner and the size, in pixels of the image as the annotation
file sizes it (``width`` × ``height``), continuous coordinates (a box that covers pixel columns 0…9 is x=0, w=10).
Each annotation is judged in this order, and counted under its first problem (``CocoAnnotations.counts``):

1. ``unknown_image``: its ``image_id`` is not among ``images`` → dropped;
2. ``unknown_category``: its ``category_id`` is not among ``categories`` → dropped;
3. ``degenerate_box``: width or height ≤ 0 as given → dropped;
4. ``outside_box``: it shares no area with the image (touching an edge is sharing none) → dropped;
5. ``clipped_box``: partly outside → cut to the image and kept (counted, not dropped).

Crowd annotations (``iscrowd`` 1: one box over a crowd of objects) are kept, with their flag; the same checks
apply. ``area`` is COCO's (the segment's area, which its evaluation sizes objects by), or the clipped box's area
when the file gives none. Images without (kept) annotations are kept, with no boxes.

``CocoReader`` hands the shard stage one row per image, in the file's order, carrying that image's kept
annotations, so each shard task needs nothing but its rows (``ROW_SCHEMA``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from components.data.ingest.image_folder import absolute_location, is_local, open_root
from components.errors import TvpError

# Counted per annotation, in the order they are judged; the first four drop it.
DROPPED = ("unknown_image", "unknown_category", "degenerate_box", "outside_box")
CLIPPED = "clipped_box"

ROW_SCHEMA = pa.schema([("image_id", pa.int64()), ("file_name", pa.string()), ("width", pa.int64()),
                        ("height", pa.int64()), ("annotations", pa.string())])


class CocoError(TvpError, ValueError):
    """The annotation file is missing, unreadable, not JSON, or not shaped like a COCO instances file. One line."""


@dataclass(frozen=True)
class CocoCategory:
    id: int
    name: str
    supercategory: str = ""


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str  # relative to the images folder; may hold sub-folders
    width: int
    height: int


@dataclass(frozen=True)
class CocoAnnotations:
    """A checked file. ``boxes``: image id → its kept annotations, in file order, each
    ``{"id", "category_id", "bbox": [x, y, w, h] clipped, in the file's pixels, "area", "iscrowd": 0|1}``.
    ``counts``: ``{"in_file", "kept", "crowd", "clipped_box", "dropped": {category: n}}``, every category present."""

    location: str
    sha256: str  # of the file's bytes: part of the shard set's fingerprint
    images: tuple[CocoImage, ...]
    categories: tuple[CocoCategory, ...]
    boxes: dict[int, list[dict[str, Any]]]
    counts: dict[str, Any]

    @property
    def images_without_annotations(self) -> int:
        return sum(1 for image in self.images if not self.boxes.get(image.id))


def clip_box(bbox: list[float], width: int, height: int) -> tuple[list[float] | None, str | None]:
    """``bbox`` ([x, y, w, h]) judged against a ``width`` × ``height`` image: (the box to keep or None, the
    problem counted or None). See the module docstring for the order."""
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return None, "degenerate_box"
    left, top = max(x, 0.0), max(y, 0.0)
    right, bottom = min(x + w, float(width)), min(y + h, float(height))
    if right <= left or bottom <= top:
        return None, "outside_box"
    if (left, top, right, bottom) == (x, y, x + w, y + h):
        return [x, y, w, h], None
    return [left, top, right - left, bottom - top], CLIPPED


def _where(section: str, index: int) -> str:
    return f"{section}[{index}]"


def _integer(entry: dict[str, Any], key: str, where: str, positive: bool = False) -> int:
    if key not in entry:
        raise CocoError(f"{where} has no {key!r}")
    value = entry[key]
    # JSON writers sometimes give an integer as 640.0: accepted; true/false are not numbers here.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (positive and value <= 0):
        raise CocoError(f"{where} has {key!r} {value!r}: expected a{' positive' if positive else 'n'} integer")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CocoError(f"{what} is {value!r}: expected a finite number")
    return float(value)


def _entries(data: dict[str, Any], section: str, required: bool = True) -> list[dict[str, Any]]:
    if section not in data:
        if required:
            raise CocoError(f"no {section!r} list: not a COCO instances file")
        return []
    entries = data[section]
    if not isinstance(entries, list):
        raise CocoError(f"{section!r} is a {type(entries).__name__}, not a list")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CocoError(f"{_where(section, index)} is a {type(entry).__name__}, not an object")
    return entries


def _images(data: dict[str, Any]) -> tuple[CocoImage, ...]:
    images, seen = [], set()
    for index, entry in enumerate(_entries(data, "images")):
        where = _where("images", index)
        image_id = _integer(entry, "id", where)
        if image_id in seen:
            raise CocoError(f"{where} repeats image id {image_id}")
        seen.add(image_id)
        file_name = entry.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise CocoError(f"{where} has file_name {file_name!r}: expected a file name")
        images.append(CocoImage(image_id, file_name, _integer(entry, "width", where, positive=True),
                                _integer(entry, "height", where, positive=True)))
    return tuple(images)


def _categories(data: dict[str, Any]) -> tuple[CocoCategory, ...]:
    categories, seen = [], set()
    for index, entry in enumerate(_entries(data, "categories")):
        where = _where("categories", index)
        category_id = _integer(entry, "id", where)
        if category_id in seen:
            raise CocoError(f"{where} repeats category id {category_id}")
        seen.add(category_id)
        name = entry.get("name")
        if not isinstance(name, str):
            raise CocoError(f"{where} has name {name!r}: expected a string")
        categories.append(CocoCategory(category_id, name, str(entry.get("supercategory") or "")))
    if not categories:
        raise CocoError("'categories' is empty: a detection set needs at least one category")
    return tuple(sorted(categories, key=lambda c: c.id))


def _bbox(entry: dict[str, Any], where: str) -> list[float]:
    bbox = entry.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise CocoError(f"{where} has bbox {bbox!r}: expected [x, y, width, height]")
    return [_number(v, f"{where}'s bbox value") for v in bbox]


def parse_coco(data: Any, location: str = "", sha256: str = "") -> CocoAnnotations:
    """Check a loaded instances file and sort its annotations to their images (module docstring)."""
    if not isinstance(data, dict):
        raise CocoError(f"the file holds a JSON {type(data).__name__}, not an object with images and categories")
    images, categories = _images(data), _categories(data)
    by_id = {image.id: image for image in images}
    category_ids = {c.id for c in categories}
    boxes: dict[int, list[dict[str, Any]]] = {}
    dropped = dict.fromkeys(DROPPED, 0)
    clipped = crowd = 0
    annotations = _entries(data, "annotations", required=False)
    for index, entry in enumerate(annotations):
        where = _where("annotations", index)
        annotation_id, image_id = _integer(entry, "id", where), _integer(entry, "image_id", where)
        category_id, bbox = _integer(entry, "category_id", where), _bbox(entry, where)
        area = _number(entry["area"], f"{where}'s area") if "area" in entry else None
        iscrowd = 1 if entry.get("iscrowd") else 0
        if image_id not in by_id:
            dropped["unknown_image"] += 1
            continue
        if category_id not in category_ids:
            dropped["unknown_category"] += 1
            continue
        image = by_id[image_id]
        box, problem = clip_box(bbox, image.width, image.height)
        if box is None:
            dropped[problem] += 1
            continue
        clipped += problem == CLIPPED
        crowd += iscrowd
        boxes.setdefault(image_id, []).append({"id": annotation_id, "category_id": category_id, "bbox": box,
                                               "area": box[2] * box[3] if area is None else area,
                                               "iscrowd": iscrowd})
    counts = {"in_file": len(annotations), "kept": len(annotations) - sum(dropped.values()), "crowd": crowd,
              CLIPPED: clipped, "dropped": dropped}
    return CocoAnnotations(location, sha256, images, categories, boxes, counts)


def read_coco(location: str) -> CocoAnnotations:
    """Read and check the instances file at ``location`` (a path or URI); ``CocoError`` in one line if bad."""
    location = absolute_location(location)
    try:
        fs, path = (pafs.LocalFileSystem(), location) if is_local(location) else pafs.FileSystem.from_uri(location)
        raw = None
        if fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as f:
                raw = f.read()
    except (OSError, pa.ArrowException, ValueError) as exc:  # object stores: credentials, permissions, network
        raise CocoError(f"cannot read {location}: {_first_line(exc)}") from exc
    if raw is None:
        raise CocoError(f"annotation file {location} does not exist (or is a folder)")
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and bytes that are no UTF-8 alike
        raise CocoError(f"{location} is not JSON: {_first_line(exc)}") from exc
    try:
        return parse_coco(data, location, hashlib.sha256(raw).hexdigest())
    except CocoError as exc:
        raise CocoError(f"{location}: {exc}") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class CocoReader:
    """The shard stage's ``InputReader``: one row per image of ``coco`` in the file's order (``ROW_SCHEMA``):
    ``image_id``, ``file_name`` (relative to ``images_root``), the file's ``width`` and ``height``, and
    ``annotations``, the image's kept annotations as a JSON list (``CocoAnnotations.boxes``; ``[]`` for none)."""

    coco: CocoAnnotations
    images_root: str  # absolute_location of the images folder: where shard tasks read
    input_name: ClassVar[str] = "annotation file"

    def describe(self) -> dict[str, Any]:
        return {"kind": "coco", "annotations": self.coco.location, "annotations_sha256": self.coco.sha256,
                "images_root": self.images_root, "images": len(self.coco.images),
                "categories": len(self.coco.categories), "annotations_in_file": self.coco.counts["in_file"]}

    def read(self, batch_rows: int) -> Iterator[pa.Table]:
        images = self.coco.images
        for start in range(0, len(images), batch_rows):
            batch = images[start:start + batch_rows]
            yield pa.table({
                "image_id": [i.id for i in batch], "file_name": [i.file_name for i in batch],
                "width": [i.width for i in batch], "height": [i.height for i in batch],
                "annotations": [json.dumps(self.coco.boxes.get(i.id, []), separators=(",", ":")) for i in batch],
            }, schema=ROW_SCHEMA)


def _check_images_folder(location: str) -> None:
    """A missing images folder would make every image ``missing_image``: refuse it up front instead."""
    try:
        fs, root = open_root(location)
        kind = fs.get_file_info(root).type
    except (OSError, TvpError) as exc:  # a malformed URI; object stores: credentials, permissions, network
        raise CocoError(f"cannot open the images folder {location}: {_first_line(exc)}") from exc
    if kind != pafs.FileType.Directory:
        raise CocoError(f"images folder {location} does not exist (or is not a folder)")


def open_coco(annotations: str, images_root: str) -> CocoReader:
    """Read ``annotations`` and pair it with the folder (or URI) its ``file_name``s are relative to;
    ``CocoError`` in one line when either is missing or the file is malformed."""
    images_root = absolute_location(images_root)
    _check_images_folder(images_root)
    return CocoReader(read_coco(annotations), images_root)
