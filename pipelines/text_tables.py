"""Labelled text tables as training data: ``tvp ingest text-table``, and tables given to train/finetune directly.

``tvp finetune bert --data train.csv --eval heldout.csv`` works: a ``--data``
or ``--eval`` that is a table file (``.csv``, ``.tsv``, ``.parquet``,
``.jsonl``, gzipped text allowed) is first sharded into the work directory
(``tables/<name>-<hash of path, size and columns>``), once; a rerun finds the
finished set and reuses it, an interrupted one resumes it.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Callable

from components.data.ingest.text_table import shard_text_table, table_spec
from components.data.ingest.url_table import iter_row_batches

MAX_ROWS_PER_SHARD = 10_000
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json", ".ndjson", ".csv.gz", ".tsv.gz", ".jsonl.gz")


def is_table_file(location: str) -> bool:
    """A local table file (not a shard set folder or a URI): what train/finetune shard first."""
    return "://" not in location and Path(location).is_file() and location.lower().endswith(TABLE_SUFFIXES)


def ingest_text_table(table: str, output: str | Path, text_column: str = "text", label_column: str = "label",
                      fmt: str = "auto", rows_per_shard: int = MAX_ROWS_PER_SHARD,
                      echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Shard a labelled text table into ``output`` (resuming a run there); return the manifest."""
    spec = table_spec(table, text_column, label_column, fmt)

    def planned(shards: int, pending: int, rows: int) -> None:
        echo(f"  {rows} rows in {shards} shards; {pending} to do")

    manifest = shard_text_table(spec, str(output), rows_per_shard, on_planned=planned)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(manifest["errors"].items())) or "none"
    echo(f"  {manifest['num_samples']} texts in {len(manifest['classes'])} classes, {manifest['num_shards']} "
         f"shards in {output}; skipped: {skipped}")
    return manifest


def rows_per_shard_for(table: str, workers: int) -> int:
    """Enough shards for every worker to read two (a table's set is small: training reads whole shards per
    worker), at most ``MAX_ROWS_PER_SHARD`` rows each."""
    rows = sum(batch.num_rows for batch in iter_row_batches(table_spec(table)))
    return max(1, min(MAX_ROWS_PER_SHARD, math.ceil(rows / (2 * max(workers, 1)))))


def shard_tables_in_place(locations: list[str], workdir: Path, workers: int,
                          echo: Callable[[str], None] = print) -> list[str]:
    """``locations`` with every table file replaced by its shard set under ``workdir/tables`` (made if needed,
    with at least two shards per worker where the table has the rows)."""
    out = []
    for location in locations:
        if not is_table_file(location):
            out.append(location)
            continue
        path = Path(location).resolve()
        stat = path.stat()
        digest = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        target = workdir / "tables" / f"{path.name.split('.')[0]}-{digest}"
        if not (target / "manifest.json").is_file():
            echo(f"sharding the labelled table {location} into {target}")
            os.makedirs(target.parent, exist_ok=True)
            ingest_text_table(str(path), target, rows_per_shard=rows_per_shard_for(str(path), workers), echo=echo)
        out.append(str(target))
    return out
