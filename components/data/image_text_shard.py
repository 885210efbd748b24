"""One image-text shard from a row range of a table: read, process, write. No Ray here.

Keys are the zero-padded input row position, so they depend on the input
alone. Failed rows are kept in the shard's Parquet with their error, and
counted by category in its stats.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from components.data.image_processing import ImageConfig, ImageError, process_image
from components.data.image_text_table import ImageTextTable, load_local_image
from components.data.shard_writer import write_shard


@dataclass(frozen=True)
class ShardSpec:
    shard_id: int
    start: int  # first input row
    stop: int  # one past the last input row


def plan_shards(num_rows: int, rows_per_shard: int) -> list[ShardSpec]:
    """Cut ``num_rows`` input rows into consecutive shards of ``rows_per_shard`` rows."""
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be at least 1")
    return [
        ShardSpec(i, start, min(start + rows_per_shard, num_rows))
        for i, start in enumerate(range(0, num_rows, rows_per_shard))
    ]


def _sample_from_row(
    row: dict[str, Any], key: str, table: ImageTextTable, extra: list[str], base_dir: str, cfg: ImageConfig
) -> dict:
    url, caption = row[table.url_column], row[table.caption_column]
    if not isinstance(url, str) or not url:
        raise ImageError("missing_url", "row has no image location")
    if not isinstance(caption, str) or not caption.strip():
        raise ImageError("empty_caption", "row has an empty caption")
    try:
        data = load_local_image(url, base_dir)
    except OSError as exc:
        raise ImageError("read", f"cannot read {url}: {exc}") from exc
    jpg, width, height = process_image(data, cfg)
    meta = {k: row[k] for k in extra}
    meta.update(key=key, url=url, caption=caption, original_width=width, original_height=height)
    return {"__key__": key, "jpg": jpg, "txt": caption, "json": meta}


def write_image_text_shard(
    table: ImageTextTable, spec: ShardSpec, out_dir: str, cfg: ImageConfig, extra_stats: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write shard ``spec`` of ``table`` into ``out_dir`` and return its stats."""
    started = time.monotonic()
    rows = table.read_rows(spec.start, spec.stop).to_pylist()
    base_dir = str(Path(table.path).parent)
    extra = table.extra_columns  # read the schema once per shard, not once per row
    samples, errors = [], {}
    columns = ["key", "url", "caption", "status", "error_category", "error"]
    status_rows: dict[str, list] = {c: [] for c in columns}
    for offset, row in enumerate(rows):
        key = f"{spec.start + offset:09d}"
        outcome: tuple[str, str | None, str | None] = ("success", None, None)
        try:
            samples.append(_sample_from_row(row, key, table, extra, base_dir, cfg))
        except ImageError as exc:
            errors[exc.category] = errors.get(exc.category, 0) + 1
            outcome = ("failed", exc.category, str(exc))
        values = (key, row.get(table.url_column), row.get(table.caption_column), *outcome)
        for column, value in zip(columns, values):
            status_rows[column].append(value if value is None else str(value))
    status_table = pa.table(status_rows, schema=pa.schema([(c, pa.string()) for c in columns]))
    stats = {
        "input_rows": len(rows),
        "successes": len(samples),
        "failures": len(rows) - len(samples),
        "errors": errors,
        "duration_s": round(time.monotonic() - started, 3),
        **(extra_stats or {}),
    }
    return write_shard(out_dir, spec.shard_id, samples, stats, rows=status_table)
