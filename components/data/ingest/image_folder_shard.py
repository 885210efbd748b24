"""One image-folder shard: a slice of listed files → classification samples. No Ray, and no writing here.

Input rows (``image_folder.ImageFolderReader``): ``path`` relative to the tree's root, ``label`` (class
index), ``size`` (bytes). Each file is read and put through the image-text ingester's image code
(``image_processing.process_image``: checks, resize, JPEG), by a few threads at once, under a memory budget
for decoded pixels (``decode_budget.py``), and handed on in row order.

A usable file becomes the sample
    ``__key__``  its row position in the set, zero-padded to 9 digits (``000001234``);
    ``.jpg``     the resized picture;
    ``.cls``     the class index as ASCII digits (``3``), what webdataset decodes as an int;
    ``.json``    ``path`` (relative to the root), ``label``, ``class`` (its name), ``width`` and ``height``
                 (the original size, upright).
Any other file is counted under one category in the shard's stats (``errors``) and skipped, never fatal:
    ``not_image``  a name that is no image's (``IMAGE_EXTENSIONS``): not read at all;
    ``too_large``  more bytes than ``max_bytes`` (not read), or more pixels than the image limit;
    ``read``       the file could not be read;
    ``decode``     a corrupt or truncated image; ``format``: an image format that is not accepted;
    ``too_small``, ``aspect_ratio``: the image filters; ``internal``: anything unexpected (with its type).
Every row's outcome is in the shard's status table (``NNNNN.parquet``: key, path, label, status,
error_category, error), so the skipped files can be found by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa

from components.data.ingest import ingest_defaults as defaults
from components.data.ingest.decode_budget import DecodeBudget
from components.data.ingest.image_folder import IMAGE_EXTENSIONS, open_root
from components.data.ingest.image_processing import ImageConfig, ImageError, process_image
from components.data.ingest.ordered_map import ordered_map
from components.data.shards.shard_source import ShardContent

STATUS_SCHEMA = pa.schema([("key", pa.string()), ("path", pa.string()), ("label", pa.int64()),
                           ("status", pa.string()), ("error_category", pa.string()), ("error", pa.string())])


@dataclass(frozen=True)
class ImageFolderConfig:
    image: ImageConfig = field(default_factory=ImageConfig)  # size, resize mode, quality, image filters
    max_bytes: int = defaults.MAX_BYTES  # larger files are too_large, unread
    # How fast, not what: left out of the set's fingerprint.
    threads: int = 8  # files read and processed at once per shard (object storage waits on the network)
    decode_budget_mb: int = defaults.DECODE_BUDGET_MB  # decoded pixels held at once per shard task


def sample_key(position: int) -> str:
    return f"{position:09d}"


@dataclass(frozen=True)
class ImageFolderShardBuilder:
    """The shard stage's ``ShardBuilder`` for files under ``root`` (a folder or URI) of the class list ``classes``."""

    root: str
    classes: tuple[str, ...]
    cfg: ImageFolderConfig = field(default_factory=ImageFolderConfig)

    def __call__(self, rows: pa.Table, first_row: int) -> ShardContent:
        fs, root = open_root(self.root)
        budget = DecodeBudget(self.cfg.decode_budget_mb * 1024 * 1024)
        inputs = rows.to_pylist()
        status: dict[str, list] = {name: [] for name in STATUS_SCHEMA.names}
        errors: dict[str, int] = {}

        def attempt(item: tuple[int, dict[str, Any]]) -> dict[str, Any] | ImageError:
            offset, row = item
            try:
                return self._sample(fs, f"{root}/{row['path']}", row, sample_key(first_row + offset), budget)
            except ImageError as exc:
                return exc
            except Exception as exc:  # no file may fail its shard: the unexpected is that file's failure
                return ImageError("internal", f"{type(exc).__name__}: {exc}")

        def record(key: str, row: dict[str, Any], error: ImageError | None) -> None:
            if error is not None:
                errors[error.category] = errors.get(error.category, 0) + 1
            failed = error is not None
            values = [key, row["path"], row["label"], "failed" if failed else "success",
                      error.category if failed else None, str(error) if failed else None]
            for name, value in zip(STATUS_SCHEMA.names, values):
                status[name].append(value)

        def samples() -> Iterator[dict[str, Any]]:
            outcomes = ordered_map(attempt, enumerate(inputs), self.cfg.threads)
            for offset, (row, outcome) in enumerate(zip(inputs, outcomes)):
                failed = isinstance(outcome, ImageError)
                record(sample_key(first_row + offset), row, outcome if failed else None)
                if not failed:
                    yield outcome

        def stats() -> dict[str, Any]:
            return {"input_rows": len(inputs), "successes": len(inputs) - sum(errors.values()),
                    "errors": dict(sorted(errors.items()))}

        return ShardContent(samples(), stats, rows=lambda: pa.table(status, schema=STATUS_SCHEMA))

    def _sample(self, fs, path: str, row: dict[str, Any], key: str, budget: DecodeBudget) -> dict[str, Any]:
        if not row["path"].lower().endswith(IMAGE_EXTENSIONS):
            raise ImageError("not_image", "not an image file by its name")
        if row["size"] > self.cfg.max_bytes:
            raise ImageError("too_large", f"{row['size']} bytes exceed the {self.cfg.max_bytes}-byte limit")
        try:
            with fs.open_input_stream(path) as f:
                data = f.read()
        except OSError as exc:
            raise ImageError("read", f"cannot read it: {exc}") from exc
        jpg, width, height = process_image(data, self.cfg.image, budget)
        label = row["label"]
        return {"__key__": key, "jpg": jpg, "cls": str(label),
                "json": {"path": row["path"], "label": label, "class": self.classes[label],
                         "width": width, "height": height}}
