"""Exact deduplication of a finished image-text shard set by the sha256 of each downloaded image.

The rule is deterministic: among successful samples with the same hash, the
first in input order (the smallest key) stays and later ones become
``duplicate`` rows. It runs after every shard is complete, so it sees the
whole run; it is idempotent (a rerun, or a run resumed after a crash in the
middle of it, reaches the same set), and each rewritten file replaces the old
one atomically, stats last.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data.atomic_files import TMP_SUFFIX, write_json_atomic
from components.data.shard_writer import completed_shards, file_sha256, shard_name

DUPLICATE = "duplicate"


def find_duplicates(out_dir: str | Path) -> dict[int, dict[str, str]]:
    """Shard id → {duplicate key: key of the first sample with the same image}, over the whole set."""
    first: dict[str, str] = {}
    duplicates: dict[int, dict[str, str]] = {}
    for shard_id in sorted(completed_shards(out_dir)):
        rows = pq.read_table(Path(out_dir) / f"{shard_name(shard_id)}.parquet", columns=["key", "status", "sha256"])
        ok = rows.filter(pc.equal(rows["status"], "success"))
        for key, digest in zip(ok["key"].to_pylist(), ok["sha256"].to_pylist()):
            kept = first.setdefault(digest, key)
            if kept != key:
                duplicates.setdefault(shard_id, {})[key] = kept
    return duplicates


def _rewrite_tar(path: Path, drop: set[str]) -> None:
    """Copy ``path`` without the members of keys in ``drop``; headers (mtime 0) and order unchanged."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with tarfile.open(path) as src, tarfile.open(tmp, "w", format=src.format) as dst:
        for member in src:
            if member.name.split(".", 1)[0] not in drop:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    os.replace(tmp, path)


def _marked_rows(path: Path, duplicates: dict[str, str]) -> pa.Table:
    rows = pq.read_table(path)
    columns = {name: rows[name].to_pylist() for name in ("key", "status", "error_category", "error")}
    for i, key in enumerate(columns["key"]):
        if key in duplicates:
            columns["status"][i], columns["error_category"][i] = DUPLICATE, DUPLICATE
            columns["error"][i] = f"same image as sample {duplicates[key]}"
    for name in ("status", "error_category", "error"):
        rows = rows.set_column(rows.schema.get_field_index(name), name, pa.array(columns[name], pa.string()))
    return rows


def _restate(out: Path, shard_id: int, rows: pa.Table) -> None:
    """Stats recounted from the rows and the tar as they now are (so a half-done earlier pass cannot skew them)."""
    name = shard_name(shard_id)
    stats = json.loads((out / f"{name}_stats.json").read_text())
    statuses = rows["status"].to_pylist()
    categories = [c for c in rows["error_category"].to_pylist() if c]
    tar = out / f"{name}.tar"
    with tarfile.open(tar) as t:
        count = len({m.name.split(".", 1)[0] for m in t})
    stats.update(successes=statuses.count("success"), failures=len(statuses) - statuses.count("success"),
                 errors={c: categories.count(c) for c in sorted(set(categories))}, count=count,
                 bytes=tar.stat().st_size, sha256=file_sha256(tar))
    write_json_atomic(out / f"{name}_stats.json", stats)


def remove_duplicates(out_dir: str | Path) -> int:
    """Drop later copies of the same image from every shard; return how many samples were dropped."""
    out = Path(out_dir)
    duplicates = find_duplicates(out)
    for shard_id, keys in sorted(duplicates.items()):
        name = shard_name(shard_id)
        _rewrite_tar(out / f"{name}.tar", set(keys))
        rows = _marked_rows(out / f"{name}.parquet", keys)
        _restate(out, shard_id, rows)
        # The rows go last: until they say "duplicate", a rerun finds these duplicates again and redoes all three.
        tmp = out / f"{name}.parquet{TMP_SUFFIX}"
        pq.write_table(rows, tmp)
        os.replace(tmp, out / f"{name}.parquet")
    return sum(len(keys) for keys in duplicates.values())
