"""Image-text ingestion: a URL (or path) + caption table → a shard set, through the one shard stage.

The source is two parts, fed to ``components/data/shards/shard_stage.py``,
which plans, resumes, runs one Ray task per shard and writes the manifest:

- ``UrlTableReader``: the table's rows in order, in batches (``url_table.py``);
- ``ImageTextShardBuilder``: one shard's rows → samples (``image_text_shard.py``).

Once every shard is complete, later copies of an image are dropped
(``components/data/shards/dedup.py``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pyarrow as pa

from components.data.ingest.image_text_shard import ImageTextShardBuilder, IngestConfig
from components.data.ingest.url_table import TableSpec, describe, iter_row_batches, resolve_files
from components.data.shards.dedup import remove_duplicates
from components.data.shards.shard_stage import Planned, ShardDone, build_shard_set


@dataclass(frozen=True)
class UrlTableReader:
    """The stage's ``InputReader`` for an image-text table: its rows with ``url``, ``caption`` and other columns."""

    spec: TableSpec
    input_name: ClassVar[str] = "table"

    def describe(self) -> dict[str, Any]:
        """The table's files, their sizes and the columns used."""
        fs, files = resolve_files(self.spec)
        sizes = [info.size for info in fs.get_file_info([f for f, _ in files])]
        return {**describe(self.spec), "sizes": sizes, "header": self.spec.header,
                "column_names": self.spec.column_names}

    def read(self, batch_rows: int) -> Iterator[pa.Table]:
        return iter_row_batches(self.spec, batch_rows)


def table_folder(spec: TableSpec) -> str:
    """Where relative image paths in a local table point: the table's folder ("" for a remote table)."""
    if "://" in spec.path and not spec.path.startswith("file://"):
        return ""
    path = Path(spec.path.removeprefix("file://"))
    return str(path if path.is_dir() else path.parent)


def shard_image_text_table(
    spec: TableSpec,
    out_dir: str | Path,
    cfg: IngestConfig,
    rows_per_shard: int,
    processes: int | None = None,
    dedup: bool = True,
    on_shard_done: ShardDone | None = None,
    on_planned: Planned | None = None,
) -> dict[str, Any]:
    """Write the missing shards of ``spec`` into ``out_dir`` (a folder or ``s3://…``); return the set's manifest.

    ``on_planned(shards, pending, rows)`` is called once the table is cut; ``on_shard_done(stats, done,
    total)`` as each shard completes. A folder holding shards made from another table or config is refused.
    """
    config = {**asdict(cfg), "dedup": dedup}
    config.pop("threads")  # how fast, not what
    config.pop("decode_budget_mb")  # how much memory, not what
    if not config["local_roots"]:
        config.pop("local_roots")  # sets made before the setting existed keep their fingerprint
    return build_shard_set(
        UrlTableReader(spec), ImageTextShardBuilder(cfg, table_folder(spec)), out_dir, config, rows_per_shard,
        processes, after_shards=remove_duplicates if dedup else None, on_planned=on_planned,
        on_shard_done=on_shard_done,
    )
