"""Writing WebDataset shard sets per the shard contract.

A shard ``NNNNN`` is ``NNNNN.tar`` (samples), optionally ``NNNNN.parquet``
(every input row with its status), and ``NNNNN_stats.json``, written last:
its presence means the shard is complete. Every file appears whole or not at
all (``ShardStore``: a rename locally, a completed upload in object storage),
so a reader never sees a partial file.
``finalize_shard_set`` writes ``sizes.json`` and ``manifest.json`` for the set.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from components.data.shards.atomic_files import TMP_SUFFIX, temporary_of
from components.data.shards.shard_store import ShardStore

MANIFEST_VERSION = 1


def shard_name(shard_id: int) -> str:
    return f"{shard_id:05d}"


def _member_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, allow_nan=False).encode("utf-8")  # strict JSON: no NaN
    raise TypeError(f"cannot store a {type(value).__name__} in a shard: encode it to bytes first")


def _add_sample(tar: tarfile.TarFile, sample: dict[str, Any]) -> None:
    """Members ``KEY.EXT``, extensions in sorted order. Written with the standard library, not webdataset's
    TarWriter, whose import pulls in torch and would slow every ingestion worker's start by seconds."""
    key = sample["__key__"]
    if "." in key:
        raise ValueError(f"sample key {key!r} contains a dot")
    for extension, value in sorted(sample.items()):
        if extension.startswith("__"):
            continue
        data = _member_bytes(value)
        # Fixed owner, mode and mtime make the tar a function of its samples: the content hash is reproducible.
        info = tarfile.TarInfo(f"{key}.{extension}")
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        tar.addfile(info, io.BytesIO(data))


class _DigestingWriter:
    """Passes writes through while counting bytes and hashing them, so the tar need not be read back."""

    def __init__(self, f):
        self.f, self.digest, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size


def write_shard(
    out_dir: str | Path | ShardStore,
    shard_id: int,
    samples: Iterable[dict[str, Any]],
    stats: dict[str, Any] | Callable[[], dict[str, Any]],
    rows: pa.Table | Callable[[], pa.Table] | None = None,
) -> dict[str, Any]:
    """Write one complete shard and return its stats (with ``count``, ``bytes`` and ``sha256`` added).

    ``samples`` are webdataset sample dicts: a dot-free ``__key__`` and one
    entry per member extension (``jpg`` bytes, ``txt`` str, ``json`` dict, ...).
    They may be a generator that is still producing; ``stats`` and ``rows`` may
    then be functions, called once every sample is written. ``out_dir`` is a
    folder, an object-storage URI or a ``ShardStore``.
    """
    store = as_store(out_dir)
    name = shard_name(shard_id)
    count = 0
    with store.open_write(f"{name}.tar") as f:
        written = _DigestingWriter(f)
        with tarfile.open(fileobj=written, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                _add_sample(tar, sample)
                count += 1
    rows = rows() if callable(rows) else rows
    stats = stats() if callable(stats) else stats
    if rows is not None:
        with store.open_write(f"{name}.parquet") as f:
            pq.write_table(rows, f)
    stats = {**stats, "shard": name, "count": count, "bytes": written.size, "sha256": written.digest.hexdigest()}
    store.write_json(f"{name}_stats.json", stats)
    return stats


def as_store(location: str | Path | ShardStore) -> ShardStore:
    return location if isinstance(location, ShardStore) else ShardStore(location)


def completed_shards(out_dir: str | Path | ShardStore) -> dict[int, dict[str, Any]]:
    """Stats of every complete shard, by shard id."""
    store = as_store(out_dir)
    return {int(name.split("_")[0]): store.read_json(name) for name in store.names() if name.endswith("_stats.json")}


SHARD_FILE = re.compile(r"^(?P<id>\d{5,})(?:\.tar|\.parquet|_stats\.json)$")
SET_FILES = ("sizes.json", "manifest.json")


def unfinished_shard_files(out_dir: str | Path | ShardStore) -> dict[str, int]:
    """Shard tars and status tables whose stats never arrived: file name → shard id."""
    store = as_store(out_dir)
    done = completed_shards(store)
    found = {}
    for name in store.names():
        match = SHARD_FILE.match(name)
        if match and not name.endswith("_stats.json") and int(match.group("id")) not in done:
            found[name] = int(match.group("id"))
    return found


def remove_partial_files(out_dir: str | Path | ShardStore, planned: set[int] | None = None) -> None:
    """Delete what an interrupted writer left: tvp's temporaries of shard and set files, and the tars and
    status tables of ``planned`` shards (all when None) whose stats never arrived. Nothing else is touched."""
    store = as_store(out_dir)
    for name in store.names():
        target = temporary_of(name) or (name.removesuffix(TMP_SUFFIX) if name.endswith(TMP_SUFFIX) else None)
        if target and (SHARD_FILE.match(target) or target in SET_FILES):
            store.delete(name)
    for name, shard_id in unfinished_shard_files(store).items():
        if planned is None or shard_id in planned:
            store.delete(name)


def finalize_shard_set(out_dir: str | Path | ShardStore, source: dict[str, Any], config: dict[str, Any],
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``sizes.json`` and ``manifest.json`` from the complete shards; return the manifest.

    The content hash covers each shard's name and tar digest in order, so it
    changes exactly when the samples do: it is the lineage that runs record.
    """
    store = as_store(out_dir)
    shards = completed_shards(store)
    sizes = {f"{shard_name(i)}.tar": s["count"] for i, s in sorted(shards.items())}
    content = hashlib.sha256()
    for i, s in sorted(shards.items()):
        content.update(f"{shard_name(i)}.tar:{s['sha256']}\n".encode())
    totals: dict[str, int] = {}
    for s in shards.values():
        for category, n in s.get("errors", {}).items():
            totals[category] = totals.get(category, 0) + n
    manifest = {
        "format_version": MANIFEST_VERSION,
        "source": source,
        "config": config,
        "num_shards": len(shards),
        "num_samples": sum(sizes.values()),
        "num_input_rows": sum(s.get("input_rows", s["count"]) for s in shards.values()),
        "errors": totals,
        "content_hash": content.hexdigest(),
        **(extra or {}),
    }
    store.write_json("sizes.json", sizes)
    store.write_json("manifest.json", manifest)
    return manifest
