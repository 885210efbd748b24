"""Streaming reads of image-text URL tables (LAION, CC3M, DataComp style).

A table is one file or a folder of files in Parquet, CSV, TSV or JSON lines,
the text formats optionally gzip-compressed. Files are opened through
``pyarrow.fs`` so that object stores work like local paths. Nothing ever
loads a whole table: Parquet is read by batches, CSV/TSV by pyarrow's
streaming reader and JSON lines in chunks of lines.

Output contract of every batch: column ``url`` (string), column ``caption``
(binary: the raw bytes, so that a caption that is not UTF-8 reaches the shard
processor and becomes a counted failure instead of stopping the read), then
every other input column as it was read. Row positions are global across the
files of a folder, taken in sorted name order.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from components.errors import TvpError

TableFormat = Literal["auto", "parquet", "csv", "tsv", "jsonl"]

_FORMATS = ("auto", "parquet", "csv", "tsv", "jsonl")
_EXTENSIONS = {
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
}
_CSV_BLOCK_BYTES = 1 << 20
_MAX_MESSAGE = 300


class TableError(TvpError, ValueError):
    """The input table is missing, unreadable, malformed or lacks a named column. One-line message."""


@dataclass(frozen=True)
class TableSpec:
    """Where a URL table is and how to read it; plain strings only, so it pickles to any worker."""

    path: str  # a file or a folder of files: a local path or a URI (file://, s3://)
    format: TableFormat = "auto"  # auto: from each file's extension (.gz allowed for text formats)
    url_column: str = "url"  # LAION: "URL"
    caption_column: str = "caption"  # LAION: "TEXT"
    header: bool = True  # csv/tsv: the first line names the columns
    column_names: tuple[str, ...] | None = None  # csv/tsv: names to use (CC3M: ("caption", "url"), header=False)

    def __post_init__(self) -> None:
        if self.format not in _FORMATS:
            raise TableError(f"unsupported table format {self.format!r} (supported: {', '.join(_FORMATS)})")
        if self.column_names is not None:
            object.__setattr__(self, "column_names", tuple(self.column_names))  # lists stay hashable


# ---------------------------------------------------------------- files


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in path:
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowException, ValueError) as exc:
        raise TableError(f"cannot open input table {path}: {_one_line(exc)}") from exc


def _format_of(name: str) -> str | None:
    """Format from a file name; gzip only wraps the line-based text formats."""
    gzipped = name.lower().endswith(".gz")
    fmt = _EXTENSIONS.get(os.path.splitext(name[:-3] if gzipped else name)[1].lower())
    return None if gzipped and fmt == "parquet" else fmt


def _folder_files(fs: pafs.FileSystem, folder: str, spec: TableSpec) -> list[tuple[str, str]]:
    infos = fs.get_file_info(pafs.FileSelector(folder))
    named = sorted((i.path, _format_of(i.base_name)) for i in infos
                   if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_")))
    files = [(path, fmt) for path, fmt in named if fmt and spec.format in ("auto", fmt)]
    if not files:
        wanted = "table" if spec.format == "auto" else spec.format
        raise TableError(f"input folder {spec.path} holds no {wanted} files")
    formats = sorted({fmt for _, fmt in files})
    if len(formats) > 1:
        raise TableError(f"input folder {spec.path} mixes formats ({', '.join(formats)}): pass format=")
    return files


def _single_file(path: str, spec: TableSpec) -> list[tuple[str, str]]:
    fmt = _format_of(os.path.basename(path)) if spec.format == "auto" else spec.format
    if fmt is None:
        raise TableError(f"cannot tell the format of {path} from its name: pass format= (parquet, csv, tsv, jsonl)")
    return [(path, fmt)]


def resolve_files(spec: TableSpec) -> tuple[pafs.FileSystem, list[tuple[str, str]]]:
    """The filesystem and the (file, format) pairs of a table, in reading order."""
    fs, path = _filesystem(spec.path)
    try:
        info = fs.get_file_info(path)
    except OSError as exc:  # object stores: credentials, permissions, network
        raise TableError(f"cannot open input table {spec.path}: {_one_line(exc)}") from exc
    if info.type == pafs.FileType.NotFound:
        raise TableError(f"input table {spec.path} does not exist")
    files = _folder_files(fs, path, spec) if info.type == pafs.FileType.Directory else _single_file(path, spec)
    for file, fmt in files:
        if spec.column_names is not None and fmt not in ("csv", "tsv"):
            raise TableError(f"column_names applies to csv/tsv files only, not {fmt} ({file})")
    return fs, files


# ---------------------------------------------------------------- columns


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _check_columns(names: list[str], file: str, spec: TableSpec) -> None:
    missing = [c for c in (spec.url_column, spec.caption_column) if c not in names]
    if missing:
        raise TableError(f"{file} has no column {', '.join(map(repr, missing))} (it has: {', '.join(names)})")
    clashes = [n for n in ("url", "caption") if n in names and n not in (spec.url_column, spec.caption_column)]
    if clashes:
        raise TableError(f"{file}: extra column {clashes[0]!r} clashes with an output column name")


def _cast(column: pa.ChunkedArray, to: pa.DataType) -> pa.ChunkedArray:
    return column if column.type == to else column.cast(to)


def _to_output(table: pa.Table, spec: TableSpec) -> pa.Table:
    """Rename and type the url and caption columns; carry every other column as it is."""
    extras = [n for n in table.column_names if n not in (spec.url_column, spec.caption_column)]
    url = _cast(table.column(spec.url_column), pa.string())
    caption = _cast(table.column(spec.caption_column), pa.binary())
    return pa.table([url, caption, *(table.column(n) for n in extras)], names=["url", "caption", *extras])


# ---------------------------------------------------------------- parquet


def _parquet_batches(fs: pafs.FileSystem, file: str, spec: TableSpec, batch_rows: int) -> Iterator[pa.Table]:
    with fs.open_input_file(file) as handle:
        parquet = pq.ParquetFile(handle)
        _check_columns(parquet.schema_arrow.names, file, spec)
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield pa.Table.from_batches([batch])


# ---------------------------------------------------------------- csv / tsv


def _parse_options(fmt: str) -> pacsv.ParseOptions:
    if fmt == "tsv":  # TSV captions hold bare quotes (CC3M): no quoting at all
        return pacsv.ParseOptions(delimiter="\t", quote_char=False)
    return pacsv.ParseOptions(delimiter=",", newlines_in_values=True)


def _csv_names(fs: pafs.FileSystem, file: str, fmt: str, spec: TableSpec) -> list[str]:
    """Column names from the header (or spec.column_names), checked against the first block's width."""
    options = pacsv.ReadOptions(autogenerate_column_names=not spec.header, block_size=_CSV_BLOCK_BYTES)
    with fs.open_input_stream(file) as stream:
        found = pacsv.open_csv(stream, read_options=options, parse_options=_parse_options(fmt)).schema.names
    if spec.column_names is None:
        return found
    if len(spec.column_names) != len(found):
        raise TableError(f"column_names has {len(spec.column_names)} names but {file} has {len(found)} columns")
    return list(spec.column_names)


def _csv_batches(fs: pafs.FileSystem, file: str, fmt: str, spec: TableSpec) -> Iterator[pa.RecordBatch]:
    names = _csv_names(fs, file, fmt, spec)
    _check_columns(names, file, spec)
    # Strings everywhere: types inferred from the first block break on a later block.
    types = {name: pa.string() for name in names} | {spec.caption_column: pa.binary()}
    read = pacsv.ReadOptions(column_names=names, skip_rows=int(spec.header), block_size=_CSV_BLOCK_BYTES)
    with fs.open_input_stream(file) as stream:
        yield from pacsv.open_csv(stream, read_options=read, parse_options=_parse_options(fmt),
                                  convert_options=pacsv.ConvertOptions(column_types=types))


# ---------------------------------------------------------------- json lines


def _replace_invalid(value: Any) -> Any:
    """Undecodable bytes outside the caption become U+FFFD, so arrow can hold the string."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _parse_json_line(line: bytes, where: str, spec: TableSpec) -> dict:
    try:
        text, clean = line.decode("utf-8"), True
    except UnicodeDecodeError:
        text, clean = line.decode("utf-8", "surrogateescape"), False
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableError(f"malformed JSON at {where}: {exc.msg} (column {exc.colno})") from exc
    if not isinstance(row, dict):
        raise TableError(f"malformed JSON at {where}: a line must be an object, not {type(row).__name__}")
    if clean:
        return row
    return {k: v if k == spec.caption_column else _replace_invalid(v) for k, v in row.items()}


def _caption_bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogateescape")  # invalid input bytes come back unchanged


def _json_column(rows: list[dict], name: str, spec: TableSpec) -> pa.Array:
    if name == spec.caption_column:
        return pa.array([_caption_bytes(row.get(name)) for row in rows], pa.binary())
    return pa.array([row.get(name) for row in rows])


def _json_table(rows: list[dict], where: str, spec: TableSpec) -> pa.Table:
    names = list(dict.fromkeys(key for row in rows for key in row))  # union, in first-seen order
    _check_columns(names, where, spec)
    return pa.table({name: _json_column(rows, name, spec) for name in names})


MAX_JSON_LINE_BYTES = 4 << 20  # a row of a JSON Lines table; longer lines are refused before they fill memory


def _limited_lines(stream: io.BufferedReader, file: str) -> Iterator[bytes]:
    number = 0
    while line := stream.readline(MAX_JSON_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_JSON_LINE_BYTES:
            raise TableError(f"line too long at {file}:{number}: more than {MAX_JSON_LINE_BYTES} bytes")
        yield line


def _jsonl_batches(fs: pafs.FileSystem, file: str, spec: TableSpec, batch_rows: int) -> Iterator[pa.Table]:
    with io.BufferedReader(fs.open_input_stream(file), 1 << 20) as stream:
        rows, first, number = [], 1, 0
        for number, line in enumerate(_limited_lines(stream, file), 1):
            if line.strip():
                rows.append(_parse_json_line(line, f"{file}:{number}", spec))
            if len(rows) == batch_rows:
                yield _json_table(rows, f"{file} (lines {first}-{number})", spec)
                rows, first = [], number + 1
        if rows:
            yield _json_table(rows, f"{file} (lines {first}-{number})", spec)


# ---------------------------------------------------------------- reading


def _read_file(fs: pafs.FileSystem, file: str, fmt: str, spec: TableSpec, batch_rows: int) -> Iterator[pa.Table]:
    """Output-contract batches of one file; any reader failure becomes a one-line TableError."""
    if fmt == "parquet":
        batches = _parquet_batches(fs, file, spec, batch_rows)
    elif fmt == "jsonl":
        batches = _jsonl_batches(fs, file, spec, batch_rows)
    else:
        batches = _csv_batches(fs, file, fmt, spec)
    try:
        for batch in batches:
            table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
            yield _to_output(table, spec)
    except TableError:
        raise
    except (pa.ArrowException, OSError, UnicodeError, ValueError, EOFError) as exc:
        raise TableError(f"cannot read {file} as {fmt}: {_one_line(exc)}") from exc


def iter_row_batches(spec: TableSpec, batch_rows: int = 65_536) -> Iterator[pa.Table]:
    """Every row of the table in order, as tables of at most ``batch_rows`` rows (none empty)."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be positive")
    fs, files = resolve_files(spec)
    for file, fmt in files:
        for table in _read_file(fs, file, fmt, spec, batch_rows):
            for start in range(0, table.num_rows, batch_rows):  # CSV blocks are sized in bytes
                yield table.slice(start, batch_rows)


# ---------------------------------------------------------------- manifest


def _input_columns(fs: pafs.FileSystem, file: str, fmt: str, spec: TableSpec) -> list[str]:
    if fmt == "parquet":
        with fs.open_input_file(file) as handle:
            return pq.ParquetFile(handle).schema_arrow.names
    if fmt in ("csv", "tsv"):
        return _csv_names(fs, file, fmt, spec)
    return list(next(_jsonl_batches(fs, file, spec, 1), pa.table({})).column_names)


def describe(spec: TableSpec) -> dict[str, Any]:
    """Files, format and input columns of a table (reads only the start of the first file), for manifests."""
    fs, files = resolve_files(spec)
    return {
        "path": spec.path,
        "format": files[0][1],
        "files": [file for file, _ in files],
        "columns": _input_columns(fs, *files[0], spec),
        "url_column": spec.url_column,
        "caption_column": spec.caption_column,
    }
