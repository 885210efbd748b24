"""Image-text tables (LAION-style): one row per sample with an image location and a caption.

Only Parquet is read for now. Rows are addressed by position, so a shard is
a row range and sample keys derive from the input alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq


class TableError(ValueError):
    """The input table is missing, unreadable or lacks a named column."""


@dataclass(frozen=True)
class ImageTextTable:
    path: str
    url_column: str = "url"
    caption_column: str = "caption"

    def __post_init__(self) -> None:
        path = Path(self.path)
        if not path.is_file():
            raise TableError(f"input table {self.path} does not exist or is not a file")
        try:
            schema = pq.read_schema(path)
        except Exception as exc:
            raise TableError(f"input table {self.path} is not a readable Parquet file: {exc}") from exc
        for column in (self.url_column, self.caption_column):
            if column not in schema.names:
                raise TableError(
                    f"input table {self.path} has no column {column!r} (it has: {', '.join(schema.names)})"
                )

    @property
    def num_rows(self) -> int:
        return pq.ParquetFile(self.path).metadata.num_rows

    @property
    def extra_columns(self) -> list[str]:
        names = pq.read_schema(self.path).names
        return [n for n in names if n not in (self.url_column, self.caption_column)]

    def read_rows(self, start: int, stop: int) -> pa.Table:
        """Rows [start, stop) in input order, reading only the row groups that hold them."""
        pf = pq.ParquetFile(self.path)
        groups, offset, first = [], 0, None
        for i in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(i).num_rows
            if offset + n > start and offset < stop:
                groups.append(i)
                first = offset if first is None else first
            offset += n
        if not groups:
            return pf.schema_arrow.empty_table()
        return pf.read_row_groups(groups).slice(start - first, stop - start)


def load_local_image(location: str, base_dir: str) -> bytes:
    """Bytes of a local image named by a path (relative to ``base_dir``) or a file:// URL."""
    if location.startswith("file://"):
        path = Path(unquote(urlparse(location).path))
    elif "://" in location:
        raise OSError(f"unsupported image location scheme: {location.split('://')[0]}")
    else:
        path = Path(location)
        if not path.is_absolute():
            path = Path(base_dir) / path
    return path.read_bytes()
