"""The Ray Data stage that turns an image-text table into a shard set.

The table is cut into row ranges; Ray Data runs one task per missing shard
(reading, decoding, validating, resizing and writing it), so shards that a
previous run completed are skipped and keys never depend on scheduling.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import ray.data

from components.data.image_processing import ImageConfig
from components.data.image_text_shard import ShardSpec, plan_shards, write_image_text_shard
from components.data.image_text_table import ImageTextTable
from components.data.shard_reader import ShardSetError
from components.data.shard_writer import completed_shards, finalize_shard_set, remove_partial_files


def _write_one(row: dict[str, Any], table: ImageTextTable, out_dir: str, cfg: ImageConfig, fingerprint: str) -> dict:
    spec = ShardSpec(int(row["shard_id"]), int(row["start"]), int(row["stop"]))
    stats = write_image_text_shard(table, spec, out_dir, cfg, extra_stats={"config_fingerprint": fingerprint})
    # Stats carry a dict of error counts whose keys vary by shard: pass JSON, not an Arrow struct.
    return {"stats": json.dumps(stats)}


def shard_image_text_table(
    table: ImageTextTable,
    out_dir: str | Path,
    cfg: ImageConfig,
    rows_per_shard: int,
    on_shard_done: Callable[[dict[str, Any], int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the missing shards of ``table`` into ``out_dir`` and return the shard set's manifest.

    ``on_shard_done(stats, done, total)`` is called as each shard completes.
    A folder holding shards made from another table or config is refused.
    """
    out = Path(out_dir)
    config = {"image": asdict(cfg), "rows_per_shard": rows_per_shard}
    source = {"table": str(Path(table.path).resolve()), "url_column": table.url_column,
              "caption_column": table.caption_column, "num_rows": table.num_rows}
    fingerprint = hashlib.sha256(json.dumps([source, config], sort_keys=True).encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    done = completed_shards(out)
    foreign = sorted(i for i, s in done.items() if s.get("config_fingerprint") != fingerprint)
    if foreign:
        raise ShardSetError(
            f"{out} holds shards made from another table or config (shard {foreign[0]:05d}); use an empty output folder"
        )
    remove_partial_files(out)
    specs = [s for s in plan_shards(table.num_rows, rows_per_shard) if s.shard_id not in done]
    total = len(done) + len(specs)
    if specs:
        items = [asdict(s) for s in specs]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(
            _write_one, fn_kwargs={"table": table, "out_dir": str(out), "cfg": cfg, "fingerprint": fingerprint}
        )
        finished = len(done)
        for row in dataset.iter_rows():
            finished += 1
            if on_shard_done:
                on_shard_done(json.loads(row["stats"]), finished, total)
    return finalize_shard_set(out, source, config)
