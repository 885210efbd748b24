"""One image-text shard from a slice of input rows: fetch, check, process, write. No Ray here.

Keys are the zero-padded input row position, so they depend on the input
alone. Every row lands in the shard's Parquet with its status; failures are
counted by category in its stats. Rows are fetched and processed by a pool of
threads (downloads wait on the network, Pillow releases the GIL while it
decodes and resizes) and written in input order as they finish.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlparse

import pyarrow as pa

from components.data.ingest.caption_filter import check_caption
from components.data.ingest.image_processing import ImageConfig, ImageError, process_image
from components.data.ingest.ordered_map import ordered_map
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import write_shard
from components.data.ingest.url_fetcher import FetchConfig, UrlFetcher

STATUS_COLUMNS = ["key", "url", "caption", "status", "error_category", "error", "sha256", "original_width",
                  "original_height"]
STATUS_SCHEMA = pa.schema([(c, pa.int64() if c.startswith("original_") else pa.string()) for c in STATUS_COLUMNS])


@dataclass(frozen=True)
class IngestConfig:
    image: ImageConfig = field(default_factory=ImageConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    threads: int = 32  # rows fetched and processed at once in each task
    min_caption_length: int = 1  # characters, surrounding whitespace not counted
    max_caption_length: int | None = None

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}


def row_key(position: int) -> str:
    return f"{position:09d}"


def read_image(url: str, fetcher: UrlFetcher, base_dir: str) -> bytes:
    """Bytes behind ``url``: http(s) through the guarded fetcher; a path (relative to ``base_dir``) or file:// read."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("http", "https"):
        result = fetcher.fetch(url)
        if not result.ok:
            raise ImageError(result.error_category or "download", result.error or "download failed")
        return result.body or b""
    if scheme not in ("", "file"):
        raise ImageError("invalid_url", f"unsupported URL scheme {scheme!r}")
    path = Path(unquote(urlparse(url).path)) if scheme == "file" else Path(url)
    try:
        return (path if path.is_absolute() else Path(base_dir) / path).read_bytes()
    except OSError as exc:
        raise ImageError("read", f"cannot read {url}: {exc.strerror or exc}") from exc


def _sample(row: dict[str, Any], key: str, fetcher: UrlFetcher, base_dir: str, cfg: IngestConfig) -> dict:
    url = row["url"]
    if not isinstance(url, str) or not url.strip():
        raise ImageError("missing_url", "row has no image location")
    caption = check_caption(row["caption"], cfg.min_caption_length, cfg.max_caption_length)
    data = read_image(url.strip(), fetcher, base_dir)
    jpg, width, height = process_image(data, cfg.image)
    meta = {k: v for k, v in row.items() if k not in ("url", "caption")}
    meta.update(key=key, url=url, caption=caption, sha256=hashlib.sha256(data).hexdigest(),
                original_width=width, original_height=height)
    return {"__key__": key, "jpg": jpg, "txt": caption, "json": meta}


def _caption_text(raw: Any) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    return bytes(raw).decode("utf-8", errors="replace")


def write_image_text_shard(
    rows: pa.Table, shard_id: int, first_row: int, out_dir: str | ShardStore, cfg: IngestConfig, base_dir: str,
    extra_stats: dict[str, Any] | None = None, fetcher: UrlFetcher | None = None,
) -> dict[str, Any]:
    """Write shard ``shard_id`` from ``rows`` (input rows ``first_row``…) into ``out_dir``; return its stats.

    ``rows`` has ``url`` (string), ``caption`` (binary or string) and any other columns, carried into each
    sample's ``.json``. Relative image paths are read from ``base_dir``.
    """
    started = time.monotonic()
    fetcher = fetcher or UrlFetcher(cfg.fetch)
    status: dict[str, list] = {c: [] for c in STATUS_COLUMNS}
    errors: dict[str, int] = {}
    counts = {"successes": 0}

    def attempt(item: tuple[int, dict[str, Any]]) -> tuple[str, dict | ImageError]:
        offset, row = item
        key = row_key(first_row + offset)
        try:
            return key, _sample(row, key, fetcher, base_dir, cfg)
        except ImageError as exc:
            return key, exc

    def samples():
        inputs = rows.to_pylist()
        for (key, outcome), row in zip(ordered_map(attempt, enumerate(inputs), cfg.threads), inputs):
            if isinstance(outcome, ImageError):
                errors[outcome.category] = errors.get(outcome.category, 0) + 1
                values = [key, row["url"], _caption_text(row["caption"]), "failed", outcome.category, str(outcome),
                          None, None, None]
            else:
                counts["successes"] += 1
                meta = outcome["json"]
                values = [key, row["url"], meta["caption"], "success", None, None, meta["sha256"],
                          meta["original_width"], meta["original_height"]]
                yield outcome
            for column, value in zip(STATUS_COLUMNS, values):
                status[column].append(value)

    def stats() -> dict[str, Any]:
        return {"input_rows": rows.num_rows, "successes": counts["successes"],
                "failures": rows.num_rows - counts["successes"], "errors": errors,
                "duration_s": round(time.monotonic() - started, 3), **(extra_stats or {})}

    return write_shard(out_dir, shard_id, samples(), stats, rows=lambda: pa.table(status, schema=STATUS_SCHEMA))
