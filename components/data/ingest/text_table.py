"""Labelled text tables (CSV, TSV, Parquet, JSON lines with ``text`` and ``label``) → classification shard sets.

The source is two parts for the one shard stage (``shard_stage.py``):

- ``TextTableReader``: the table's rows in order, read as ``url_table.py``
  streams any table (local or object storage, gzip text, folders of files),
  with the label column read into ``label`` and the text into ``text``;
  ``describe()`` reads the label column once to fix the classes for the
  whole set, so every shard maps a label to the same id.
- ``TextShardBuilder``: a shard's rows → samples ``.txt`` (the text) and
  ``.json`` (``label`` id and ``label_name``); empty or undecodable texts and
  missing labels are counted as errors, never stop the run.

Labels that are all integers keep their values as ids; any other labels are
names, numbered in sorted order. The class list goes into the manifest
(``classes``), where evaluation and fine-tuning read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from components.data.ingest.url_table import TableError, TableSpec, describe, iter_row_batches
from components.data.shards.shard_source import ShardContent
from components.data.shards.shard_stage import Planned, ShardDone, build_shard_set

MAX_CLASSES = 100_000  # more distinct labels than this is a text column named as the label, not classes


def table_spec(path: str, text_column: str = "text", label_column: str = "label", fmt: str = "auto") -> TableSpec:
    # url_table reads two named columns of any table; here they are the label (as a string) and the text.
    return TableSpec(path, fmt, url_column=label_column, caption_column=text_column)


def read_classes(spec: TableSpec) -> dict[int, str]:
    """Class id → name for every label in the table (one pass over the label column)."""
    names: set[str] = set()
    for batch in iter_row_batches(spec):
        labels = batch.column("url")
        names.update(v for v in pc.unique(labels).to_pylist() if v is not None and v.strip())
        if len(names) > MAX_CLASSES:
            raise TableError(f"{spec.path}: column {spec.url_column!r} has over {MAX_CLASSES} distinct values; "
                             "is it the label?")
    if not names:
        raise TableError(f"{spec.path} has no labelled rows (column {spec.url_column!r} is empty)")
    stripped = {n.strip() for n in names}
    if all(_is_int(n) for n in stripped):
        return {int(n): str(int(n)) for n in sorted(stripped, key=int)}
    return dict(enumerate(sorted(stripped)))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TextTableReader:
    """The stage's ``InputReader``: rows with ``label`` (string) and ``text`` (bytes)."""

    spec: TableSpec
    input_name: ClassVar[str] = "table"

    def describe(self) -> dict[str, Any]:
        source = describe(self.spec)
        return {**source, "kind": "text-table", "text_column": source.pop("caption_column"),
                "label_column": source.pop("url_column")}

    def read(self, batch_rows: int) -> Iterator[pa.Table]:
        for batch in iter_row_batches(self.spec, batch_rows):
            yield pa.table({"label": batch.column("url"), "text": batch.column("caption")})


@dataclass(frozen=True)
class TextShardBuilder:
    """One shard's rows → ``.txt`` + ``.json`` samples; keys are row positions in the whole table."""

    classes: dict[int, str]
    ids: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", {name: i for i, name in self.classes.items()})

    def __call__(self, rows: pa.Table, first_row: int) -> ShardContent:
        errors: dict[str, int] = {}

        def fail(category: str) -> None:
            errors[category] = errors.get(category, 0) + 1

        def samples() -> Iterator[dict[str, Any]]:
            for offset, (label, text) in enumerate(zip(rows.column("label").to_pylist(),
                                                       rows.column("text").to_pylist())):
                name = str(int(label)) if label is not None and _is_int(label.strip()) else (label or "").strip()
                if name not in self.ids:
                    fail("missing_label")
                    continue
                try:
                    decoded = (text or b"").decode("utf-8").strip()
                except UnicodeDecodeError:
                    fail("text_not_utf8")
                    continue
                if not decoded:
                    fail("empty_text")
                    continue
                yield {"__key__": f"{first_row + offset:09d}", "txt": decoded,
                       "json": {"label": self.ids[name], "label_name": name}}

        return ShardContent(samples(), lambda: {"input_rows": rows.num_rows, "errors": errors})


def shard_text_table(spec: TableSpec, out_dir: str, rows_per_shard: int = 10_000, processes: int | None = None,
                     on_planned: Planned | None = None, on_shard_done: ShardDone | None = None) -> dict[str, Any]:
    """Write the missing shards of a labelled text table into ``out_dir``; return the manifest (with ``classes``)."""
    classes = read_classes(spec)
    manifest_classes = {str(i): name for i, name in classes.items()}
    return build_shard_set(TextTableReader(spec), TextShardBuilder(classes), out_dir, {"classes": manifest_classes},
                           rows_per_shard, processes, on_planned=on_planned, on_shard_done=on_shard_done,
                           manifest_extra={"classes": manifest_classes})
