"""One image-text shard from a slice of input rows: fetch, check, process. No Ray, and no writing here.

Keys are the zero-padded input row position, so they depend on the input
alone. Every row lands in the shard's Parquet with its status; failures are
counted by category in its stats. Rows are fetched and processed by a pool of
threads (downloads wait on the network, Pillow releases the GIL while it
decodes and resizes) and handed on in input order as they finish; the shard
stage (``components/data/shards/shard_stage.py``) writes them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import pyarrow as pa

from components.data.ingest import ingest_defaults as defaults
from components.data.ingest.caption_filter import check_caption
from components.data.ingest.decode_budget import DecodeBudget
from components.data.ingest.image_processing import ImageConfig, ImageError, process_image
from components.data.ingest.json_values import clean_text, json_fields
from components.data.ingest.local_files import LocalFiles
from components.data.ingest.ordered_map import ordered_map
from components.data.ingest.url_fetcher import FetchConfig, UrlFetcher
from components.data.shards.shard_source import ShardContent

STATUS_COLUMNS = ["key", "url", "caption", "status", "error_category", "error", "sha256", "original_width",
                  "original_height"]
STATUS_SCHEMA = pa.schema([(c, pa.int64() if c.startswith("original_") else pa.string()) for c in STATUS_COLUMNS])


@dataclass(frozen=True)
class IngestConfig:
    image: ImageConfig = field(default_factory=ImageConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    threads: int = defaults.THREADS  # rows fetched and processed at once in each task
    min_caption_length: int = defaults.MIN_CAPTION_LENGTH  # characters, surrounding whitespace not counted
    max_caption_length: int | None = defaults.MAX_CAPTION_LENGTH
    # Folders (every node sees them) whose files image locations may name, besides a local table's own folder.
    local_roots: tuple[str, ...] = ()
    # Memory for decoded pixels held at once by one task's threads (decode_budget.py); bounds a task's peak.
    decode_budget_mb: int = defaults.DECODE_BUDGET_MB

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}


def row_key(position: int) -> str:
    return f"{position:09d}"


def local_files(cfg: IngestConfig, base_dir: str) -> LocalFiles:
    """What a shard may read from local disk: its table's folder (when local) and the roots given on purpose."""
    roots = ((base_dir,) if base_dir else ()) + tuple(cfg.local_roots)
    return LocalFiles(roots, base_dir, cfg.fetch.max_bytes, cfg.fetch.timeout_s)


def read_image(url: str, fetcher: UrlFetcher, local: LocalFiles) -> bytes:
    """Bytes behind ``url``: http(s) through the guarded fetcher; a path or ``file://`` URL only by consent."""
    scheme = url.split(":", 1)[0].lower() if ":" in url.split("/", 1)[0] else ""
    if scheme in ("http", "https"):
        result = fetcher.fetch(url)
        if not result.ok:
            raise ImageError(result.error_category or "download", result.error or "download failed")
        return result.body or b""
    if scheme not in ("", "file"):
        raise ImageError("invalid_url", f"unsupported URL scheme {scheme!r}")
    return local.read(url)


def _sample(row: dict[str, Any], key: str, fetcher: UrlFetcher, local: LocalFiles, cfg: IngestConfig,
            budget: DecodeBudget) -> dict:
    url = row["url"]
    if not isinstance(url, str) or not url.strip():
        raise ImageError("missing_url", "row has no image location")
    if any(ord(c) < 32 or ord(c) == 127 for c in url.strip()):
        raise ImageError("invalid_url", "the image location holds control characters")
    caption = check_caption(row["caption"], cfg.min_caption_length, cfg.max_caption_length)
    data = read_image(url.strip(), fetcher, local)
    jpg, width, height = process_image(data, cfg.image, budget)
    meta = json_fields({k: v for k, v in row.items() if k not in ("url", "caption")})
    meta.update(key=key, url=clean_text(url), caption=caption, sha256=hashlib.sha256(data).hexdigest(),
                original_width=width, original_height=height)
    return {"__key__": key, "jpg": jpg, "txt": caption, "json": meta}


def _caption_text(raw: Any) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return clean_text(raw)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw).decode("utf-8", errors="replace")
    return clean_text(str(raw))


def _url_text(raw: Any) -> str | None:
    return None if raw is None else clean_text(raw if isinstance(raw, str) else str(raw))


class _RowLog:
    """Every input row's outcome in input order: the shard's status table and its counts."""

    def __init__(self):
        self.columns: dict[str, list] = {c: [] for c in STATUS_COLUMNS}
        self.errors: dict[str, int] = {}
        self.successes = 0

    def failed(self, key: str, row: dict[str, Any], error: ImageError) -> None:
        self.errors[error.category] = self.errors.get(error.category, 0) + 1
        self._add([key, _url_text(row.get("url")), _caption_text(row.get("caption")), "failed", error.category,
                   clean_text(str(error)), None, None, None])

    def succeeded(self, sample: dict[str, Any]) -> None:
        self.successes += 1
        meta = sample["json"]
        self._add([sample["__key__"], meta["url"], meta["caption"], "success", None, None, meta["sha256"],
                   meta["original_width"], meta["original_height"]])

    def _add(self, values: list[Any]) -> None:
        for column, value in zip(STATUS_COLUMNS, values):
            self.columns[column].append(value)

    def table(self) -> pa.Table:
        return pa.table(self.columns, schema=STATUS_SCHEMA)


def build_image_text_shard(
    rows: pa.Table, first_row: int, cfg: IngestConfig, base_dir: str, fetcher: UrlFetcher | None = None,
) -> ShardContent:
    """The shard made of ``rows`` (input rows ``first_row``…): a sample per usable row, a status row per row.

    Every row gets a status, whatever it holds: an unexpected error is that row's ``internal`` failure, with
    the exception's type in its error. Extra columns reach ``.json`` as strict JSON (``json_values.py``).

    ``rows`` has ``url`` (string), ``caption`` (binary or string) and any other columns, carried into each
    sample's ``.json``. Local image locations are read only inside ``base_dir`` (the table's folder, "" for a
    remote table) and ``cfg.local_roots`` (``local_files.py``); relative ones from ``base_dir``. Images are fetched and processed
    as the samples are consumed.
    """
    started = time.monotonic()
    fetcher = fetcher or UrlFetcher(cfg.fetch)
    local = local_files(cfg, base_dir)
    budget = DecodeBudget(cfg.decode_budget_mb * 1024 * 1024)
    inputs = rows.to_pylist()
    log = _RowLog()

    def attempt(item: tuple[int, dict[str, Any]]) -> tuple[str, dict | ImageError]:
        offset, row = item
        key = row_key(first_row + offset)
        try:
            return key, _sample(row, key, fetcher, local, cfg, budget)
        except ImageError as exc:
            return key, exc
        except Exception as exc:  # no row may fail its shard: the unexpected is that row's failure
            return key, ImageError("internal", f"{type(exc).__name__}: {exc}")

    def samples() -> Iterator[dict[str, Any]]:
        for (key, outcome), row in zip(ordered_map(attempt, enumerate(inputs), cfg.threads), inputs):
            if isinstance(outcome, ImageError):
                log.failed(key, row, outcome)
            else:
                log.succeeded(outcome)
                yield outcome

    def stats() -> dict[str, Any]:
        return {"input_rows": len(inputs), "successes": log.successes, "failures": len(inputs) - log.successes,
                "errors": log.errors, "duration_s": round(time.monotonic() - started, 3)}

    return ShardContent(samples(), stats, rows=log.table)


@dataclass(frozen=True)
class ImageTextShardBuilder:
    """The image-text ``ShardBuilder`` of the shard stage (see ``build_image_text_shard``)."""

    cfg: IngestConfig
    base_dir: str  # where relative image paths point: the table's folder ("" for a remote table)

    def __call__(self, rows: pa.Table, first_row: int) -> ShardContent:
        return build_image_text_shard(rows, first_row, self.cfg, self.base_dir)
