"""The Ray Data stage that turns an image-text URL table into a shard set.

1. Plan: the table is streamed once and cut into shards by input row count;
   each missing shard's rows are saved to ``_inputs/NNNNN.parquet`` (memory
   stays at about one shard, however large the table).
2. Shards: Ray Data runs one task per missing shard (fetch, check, process,
   write), ``processes`` at a time; completed shards are never redone.
3. Dedup: once every shard is complete, later copies of an image are dropped
   (``components/data/shards/dedup.py``).
4. ``sizes.json`` and ``manifest.json``; the planned inputs are removed.

Keys and shard boundaries depend on the input alone, so a rerun after a crash
gives exactly the set an uninterrupted run gives.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq
import ray
import ray.data

from components.data.shards.dedup import remove_duplicates
from components.data.ingest.image_text_shard import IngestConfig, write_image_text_shard
from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import completed_shards, finalize_shard_set, remove_partial_files, shard_name
from components.data.ingest.url_table import TableSpec, describe, iter_shards, resolve_files

INPUTS = "_inputs"
ShardDone = Callable[[dict[str, Any], int, int], None]


def _source(spec: TableSpec) -> dict[str, Any]:
    """What the shard set was made from: the table's files, their sizes and the columns used."""
    fs, files = resolve_files(spec)
    sizes = [info.size for info in fs.get_file_info([f for f, _ in files])]
    return {**describe(spec), "sizes": sizes, "header": spec.header, "column_names": spec.column_names}


def _base_dir(spec: TableSpec) -> str:
    """Where relative image paths in a local table point: the table's folder."""
    if "://" in spec.path and not spec.path.startswith("file://"):
        return ""
    path = Path(spec.path.removeprefix("file://"))
    return str(path if path.is_dir() else path.parent)


def _forget_other_inputs(store: ShardStore, fingerprint: str) -> None:
    """Planned inputs are reused by a resumed run only if they were planned from the same table and config."""
    marker = f"{INPUTS}/FINGERPRINT"
    if store.exists(INPUTS) and (not store.exists(marker) or store.read_bytes(marker).decode() != fingerprint):
        store.delete_folder(INPUTS)
    store.makedirs(INPUTS)
    store.write_bytes(marker, fingerprint.encode())


def plan_inputs(spec: TableSpec, store: ShardStore, rows_per_shard: int, done: set[int]) -> tuple[list[dict], int, int]:
    """Save each missing shard's rows; return (pending shards, number of shards, number of input rows)."""
    pending, shards, total = [], 0, 0
    for shard_id, first_row, rows in iter_shards(spec, rows_per_shard):
        shards, total = shards + 1, total + rows.num_rows
        if shard_id in done:
            continue
        name = f"{INPUTS}/{shard_name(shard_id)}.parquet"
        if not store.exists(name):
            with store.open_write(name) as f:
                pq.write_table(rows, f)
        pending.append({"shard_id": shard_id, "first_row": first_row, "rows": rows.num_rows})
    return pending, shards, total


def _write_one(item: dict[str, Any], location: str, cfg: IngestConfig, base_dir: str, fingerprint: str) -> dict:
    shard_id = int(item["shard_id"])
    store = ShardStore(location)
    rows = pq.read_table(io.BytesIO(store.read_bytes(f"{INPUTS}/{shard_name(shard_id)}.parquet")))
    lineage = {"config_fingerprint": fingerprint, "node_id": ray.get_runtime_context().get_node_id()}
    stats = write_image_text_shard(rows, shard_id, int(item["first_row"]), store, cfg, base_dir, extra_stats=lineage)
    # Stats carry a dict of error counts whose keys vary by shard: pass JSON, not an Arrow struct.
    return {"stats": json.dumps(stats)}


def _fingerprint(source: dict[str, Any], config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([source, config], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_foreign(out: str, done: dict[int, dict[str, Any]], fingerprint: str) -> None:
    foreign = sorted(i for i, s in done.items() if s.get("config_fingerprint") != fingerprint)
    if foreign:
        raise ShardSetError(f"{out} holds shards made from another table or config (shard {foreign[0]:05d}); "
                            "use an empty output folder or the same arguments")


def shard_image_text_table(
    spec: TableSpec,
    out_dir: str | Path,
    cfg: IngestConfig,
    rows_per_shard: int,
    processes: int | None = None,
    dedup: bool = True,
    on_shard_done: ShardDone | None = None,
    on_planned: Callable[[int, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the missing shards of ``spec`` into ``out_dir`` (a folder or ``s3://…``); return the set's manifest.

    ``on_planned(shards, pending, rows)`` is called once the table is cut; ``on_shard_done(stats, done,
    total)`` as each shard completes. A folder holding shards made from another table or config is refused.
    """
    store = ShardStore(out_dir)
    source = _source(spec)  # clear errors on a bad table before anything is written
    config = {**asdict(cfg), "rows_per_shard": rows_per_shard, "dedup": dedup}
    config.pop("threads")  # how fast, not what
    fingerprint = _fingerprint(source, config)
    created = not store.exists()
    store.makedirs()
    done = completed_shards(store)
    _check_foreign(store.location, done, fingerprint)
    remove_partial_files(store)
    _forget_other_inputs(store, fingerprint)
    try:
        pending, num_shards, num_rows = plan_inputs(spec, store, rows_per_shard, set(done))
    except Exception:  # a table that turns out malformed halfway: leave nothing behind that was not there
        if not done:
            store.delete_folder(INPUTS)
            if created:
                store.fs.delete_dir(store.root)
        raise
    if on_planned:
        on_planned(num_shards, len(pending), num_rows)
    if pending:
        processes = processes or max(1, int(ray.cluster_resources().get("CPU", 1)))
        dataset = ray.data.from_items(pending, override_num_blocks=len(pending)).map(
            _write_one, compute=ray.data.TaskPoolStrategy(size=min(processes, len(pending))),
            fn_kwargs={"location": store.location, "cfg": cfg, "base_dir": _base_dir(spec),
                       "fingerprint": fingerprint},
        )
        finished = len(done)
        for row in dataset.iter_rows():
            finished += 1
            if on_shard_done:
                on_shard_done(json.loads(row["stats"]), finished, num_shards)
    if dedup:
        remove_duplicates(store)
    manifest = finalize_shard_set(store, source, config)
    store.delete_folder(INPUTS)
    return manifest
