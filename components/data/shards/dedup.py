"""Exact deduplication of a finished image-text shard set by the sha256 of each downloaded image.

The rule is deterministic: among successful samples with the same hash, the
first in input order (the smallest key) stays and later ones become
``duplicate`` rows. It runs after every shard is complete, so it sees the
whole run; it is idempotent (a rerun, or a run resumed after a crash in the
middle of it, reaches the same set), and each rewritten file replaces the old
one whole: tar, then stats, then the rows, which say what was done.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import as_store, completed_shards, shard_name

DUPLICATE = "duplicate"


def _rows(store: ShardStore, shard_id: int, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(store.read_bytes(f"{shard_name(shard_id)}.parquet")), columns=columns)


def find_duplicates(out_dir: str | Path | ShardStore) -> dict[int, dict[str, str]]:
    """Shard id → {duplicate key: key of the first sample with the same image}, over the whole set."""
    store = as_store(out_dir)
    first: dict[str, str] = {}
    duplicates: dict[int, dict[str, str]] = {}
    for shard_id in sorted(completed_shards(store)):
        rows = _rows(store, shard_id, ["key", "status", "sha256"])
        ok = rows.filter(pc.equal(rows["status"], "success"))
        for key, digest in zip(ok["key"].to_pylist(), ok["sha256"].to_pylist()):
            kept = first.setdefault(digest, key)
            if kept != key:
                duplicates.setdefault(shard_id, {})[key] = kept
    return duplicates


def _rewrite_tar(store: ShardStore, name: str, drop: set[str]) -> tuple[int, int, str]:
    """Copy tar ``name`` without the members of keys in ``drop`` (headers and order unchanged);
    return (samples, bytes, sha256) of the new tar."""
    out = io.BytesIO()
    keys = set()
    with tarfile.open(fileobj=io.BytesIO(store.read_bytes(name))) as src:
        with tarfile.open(fileobj=out, mode="w", format=src.format) as dst:
            for member in src:
                key = member.name.split(".", 1)[0]
                if key not in drop:
                    keys.add(key)
                    dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    data = out.getvalue()
    store.write_bytes(name, data)
    return len(keys), len(data), hashlib.sha256(data).hexdigest()


def _marked(rows: pa.Table, duplicates: dict[str, str]) -> pa.Table:
    columns = {name: rows[name].to_pylist() for name in ("key", "status", "error_category", "error")}
    for i, key in enumerate(columns["key"]):
        if key in duplicates:
            columns["status"][i], columns["error_category"][i] = DUPLICATE, DUPLICATE
            columns["error"][i] = f"same image as sample {duplicates[key]}"
    for name in ("status", "error_category", "error"):
        rows = rows.set_column(rows.schema.get_field_index(name), name, pa.array(columns[name], pa.string()))
    return rows


def remove_duplicates(out_dir: str | Path | ShardStore) -> int:
    """Drop later copies of the same image from every shard; return how many samples were dropped."""
    store = as_store(out_dir)
    duplicates = find_duplicates(store)
    for shard_id, keys in sorted(duplicates.items()):
        name = shard_name(shard_id)
        count, size, digest = _rewrite_tar(store, f"{name}.tar", set(keys))
        rows = _marked(_rows(store, shard_id), keys)
        # Stats recounted from the rows as they now are, so a half-done earlier pass cannot skew them.
        statuses = rows["status"].to_pylist()
        categories = [c for c in rows["error_category"].to_pylist() if c]
        stats = store.read_json(f"{name}_stats.json")
        stats.update(successes=statuses.count("success"), failures=len(statuses) - statuses.count("success"),
                     errors={c: categories.count(c) for c in sorted(set(categories))}, count=count, bytes=size,
                     sha256=digest)
        store.write_json(f"{name}_stats.json", stats)
        # The rows go last: until they say "duplicate", a rerun finds these duplicates again and redoes all three.
        with store.open_write(f"{name}.parquet") as f:
            pq.write_table(rows, f)
    return sum(len(keys) for keys in duplicates.values())
