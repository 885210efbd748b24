"""One COCO shard: a slice of an instances file's images → detection samples. No Ray, and no writing here.

Input rows (``coco_annotations.CocoReader``): ``image_id``, ``file_name`` (relative to the images folder),
``width`` and ``height`` as the annotation file gives them, and ``annotations``: the image's kept boxes as a JSON
list (already checked and clipped, in the file's pixels). Each file is read (a local folder or object storage)
and put through the image-text ingester's image code (``image_processing.process_image``: checks, decode, JPEG),
by a few threads at once, under a memory budget for decoded pixels (``decode_budget.py``).

Geometry: the stored image keeps the original's shape. When its longer side exceeds ``max_size`` it is
scaled down, both axes alike (``keep_ratio_largest``, sizes rounded as ``resize_plan`` rounds them), and every
box is scaled by the same per-axis factors (stored size / file size); smaller images are never enlarged, and
``max_size`` 0 keeps every size. The picture is turned upright by its EXIF orientation, as every ingester does;
a file whose upright size is not the annotation file's ``width`` × ``height`` (e.g. a phone photo annotated in
its unrotated pixels) cannot be matched to its boxes and is skipped as ``size_mismatch``.

A usable image becomes the sample
    ``__key__``  its row position in the set, zero-padded to 9 digits (``000001234``);
    ``.jpg``     the (possibly scaled) picture;
    ``.json``    ``image_id``, ``file_name``; ``width``, ``height``: the stored picture's size;
                 ``original_width``, ``original_height``: the annotation file's; and one entry per box, in
                 the file's order: ``boxes`` ([x, y, w, h], COCO's top-left corner and size, in stored-picture
                 pixels, continuous coordinates: 0 ≤ x < x + w ≤ width, exactly for a picture stored at its
                 size, up to float rounding for a scaled one), ``category_ids`` (the file's ids, as they are),
                 ``iscrowd`` (0 or 1), ``areas`` (COCO's area, scaled by both factors) and ``annotation_ids``.
                 An image without boxes has empty lists.
Any other image is counted under one category in the shard's stats (``errors``) and skipped, never fatal:
    ``bad_path``       its file name is absolute or climbs out of the images folder (``..``): not read;
    ``missing_image``  no file by that name; ``read``: the file could not be read;
    ``too_large``      more bytes than ``max_bytes`` (not read), or more pixels than ``max_pixels``;
    ``decode``         a corrupt or truncated image; ``format``: an image format that is not accepted;
    ``size_mismatch``  see above; ``internal``: anything unexpected (with its type).
The stats also hold ``boxes`` (boxes written), ``boxes_of_skipped_images`` (kept annotations lost with their
image) and ``samples_without_boxes``. Every row's outcome is in the shard's status table (``NNNNN.parquet``:
key, image_id, file_name, status, error_category, error, boxes), so skipped images can be found by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from components.data.ingest import ingest_defaults as defaults
from components.data.ingest.decode_budget import DecodeBudget
from components.data.ingest.image_folder import open_root
from components.data.ingest.image_processing import ImageConfig, ImageError, process_image, resize_plan
from components.data.ingest.ordered_map import ordered_map
from components.data.shards.shard_source import ShardContent

STATUS_SCHEMA = pa.schema([("key", pa.string()), ("image_id", pa.int64()), ("file_name", pa.string()),
                           ("status", pa.string()), ("error_category", pa.string()), ("error", pa.string()),
                           ("boxes", pa.int64())])

# DETR's largest input side (shorter side 800, longer at most 1333): the standard recipe never needs to enlarge
# a stored picture, and COCO's own (at most 640 px) are stored at their size.
MAX_SIZE = 1333


@dataclass(frozen=True)
class CocoConfig:
    max_size: int = MAX_SIZE  # a longer side above this is scaled down to it, boxes alike; 0: never scaled
    jpeg_quality: int = defaults.JPEG_QUALITY
    max_bytes: int = defaults.MAX_BYTES  # larger files are too_large, unread
    max_pixels: int = defaults.MAX_PIXELS  # larger images are too_large, from the header
    # How fast, not what: left out of the set's fingerprint.
    threads: int = 8  # files read and processed at once per shard (object storage waits on the network)
    decode_budget_mb: int = defaults.DECODE_BUDGET_MB  # decoded pixels held at once per shard task

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change the samples."""
        return {"max_size": self.max_size, "jpeg_quality": self.jpeg_quality, "max_bytes": self.max_bytes,
                "max_pixels": self.max_pixels}


def stored_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """The size a ``width`` × ``height`` picture is stored at: the longer side at most ``max_size`` (0: any)."""
    if not max_size or max(width, height) <= max_size:
        return width, height
    return resize_plan(width, height, max_size, "keep_ratio_largest")[0]


def scale_annotations(annotations: list[dict[str, Any]], sx: float, sy: float) -> dict[str, list]:
    """The ``.json``'s per-box lists from an image's kept annotations, coordinates scaled by ``sx``, ``sy``."""
    return {
        "boxes": [[a["bbox"][0] * sx, a["bbox"][1] * sy, a["bbox"][2] * sx, a["bbox"][3] * sy]
                  for a in annotations],
        "category_ids": [a["category_id"] for a in annotations],
        "iscrowd": [a["iscrowd"] for a in annotations],
        "areas": [a["area"] * sx * sy for a in annotations],
        "annotation_ids": [a["id"] for a in annotations],
    }


def sample_key(position: int) -> str:
    return f"{position:09d}"


def _is_inside(file_name: str) -> bool:
    """Whether ``file_name`` names a file under the images folder (no absolute path, no ``..``)."""
    parts = file_name.replace("\\", "/").split("/")
    return not file_name.startswith(("/", "\\")) and ".." not in parts and "://" not in file_name


@dataclass(frozen=True)
class CocoShardBuilder:
    """The shard stage's ``ShardBuilder`` for images under ``images_root`` (a folder or URI)."""

    images_root: str
    cfg: CocoConfig = CocoConfig()

    def __call__(self, rows: pa.Table, first_row: int) -> ShardContent:
        fs, root = open_root(self.images_root)
        budget = DecodeBudget(self.cfg.decode_budget_mb * 1024 * 1024)
        inputs = rows.to_pylist()
        status: dict[str, list] = {name: [] for name in STATUS_SCHEMA.names}
        counts = {"errors": {}, "boxes": 0, "boxes_of_skipped_images": 0, "samples_without_boxes": 0}

        def attempt(item: tuple[int, dict[str, Any]]) -> dict[str, Any] | ImageError:
            offset, row = item
            try:
                return self._sample(fs, root, row, sample_key(first_row + offset), budget)
            except ImageError as exc:
                return exc
            except Exception as exc:  # no image may fail its shard: the unexpected is that image's failure
                return ImageError("internal", f"{type(exc).__name__}: {exc}")

        def record(key: str, row: dict[str, Any], outcome: dict[str, Any] | ImageError) -> None:
            failed = isinstance(outcome, ImageError)
            boxes = len(json.loads(row["annotations"]))
            if failed:
                counts["errors"][outcome.category] = counts["errors"].get(outcome.category, 0) + 1
            counts["boxes_of_skipped_images" if failed else "boxes"] += boxes
            counts["samples_without_boxes"] += not failed and not boxes
            values = [key, row["image_id"], row["file_name"], "failed" if failed else "success",
                      outcome.category if failed else None, str(outcome) if failed else None, boxes]
            for name, value in zip(STATUS_SCHEMA.names, values):
                status[name].append(value)

        def samples() -> Iterator[dict[str, Any]]:
            outcomes = ordered_map(attempt, enumerate(inputs), self.cfg.threads)
            for offset, (row, outcome) in enumerate(zip(inputs, outcomes)):
                record(sample_key(first_row + offset), row, outcome)
                if not isinstance(outcome, ImageError):
                    yield outcome

        def stats() -> dict[str, Any]:
            errors = dict(sorted(counts["errors"].items()))
            return {"input_rows": len(inputs), "successes": len(inputs) - sum(errors.values()), "errors": errors,
                    **{k: v for k, v in counts.items() if k != "errors"}}

        return ShardContent(samples(), stats, rows=lambda: pa.table(status, schema=STATUS_SCHEMA))

    def _read(self, fs: pafs.FileSystem, root: str, file_name: str) -> bytes:
        if not _is_inside(file_name):
            raise ImageError("bad_path", "the file name is absolute or leaves the images folder")
        path = f"{root}/{file_name}"
        try:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise ImageError("missing_image", "no such file in the images folder")
            if info.type != pafs.FileType.File:
                raise ImageError("read", "not a file")
            if info.size is not None and info.size > self.cfg.max_bytes:
                raise ImageError("too_large", f"{info.size} bytes exceed the {self.cfg.max_bytes}-byte limit")
            with fs.open_input_stream(path) as f:
                return f.read()
        except OSError as exc:
            raise ImageError("read", f"cannot read it: {exc}") from exc

    def _sample(self, fs: pafs.FileSystem, root: str, row: dict[str, Any], key: str,
                budget: DecodeBudget) -> dict[str, Any]:
        data = self._read(fs, root, row["file_name"])
        width, height = row["width"], row["height"]
        size = stored_size(width, height, self.cfg.max_size)
        # Planned from the annotation file's size, which the picture must have anyway (size_mismatch below).
        mode = "no" if size == (width, height) else "keep_ratio_largest"
        image = ImageConfig(image_size=max(size), resize_mode=mode, jpeg_quality=self.cfg.jpeg_quality,
                            max_pixels=self.cfg.max_pixels, min_size=1, max_aspect_ratio=0)
        jpg, file_width, file_height = process_image(data, image, budget)
        if (file_width, file_height) != (width, height):
            raise ImageError("size_mismatch", f"the picture is {file_width}x{file_height} upright; the annotation "
                                              f"file says {width}x{height}")
        meta = {"image_id": row["image_id"], "file_name": row["file_name"], "width": size[0], "height": size[1],
                "original_width": width, "original_height": height,
                **scale_annotations(json.loads(row["annotations"]), size[0] / width, size[1] / height)}
        return {"__key__": key, "jpg": jpg, "json": meta}
