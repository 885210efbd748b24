"""Writing WebDataset shard sets per the shard contract.

A shard ``NNNNN`` is ``NNNNN.tar`` (samples), optionally ``NNNNN.parquet``
(every input row with its status), and ``NNNNN_stats.json``, written last:
its presence means the shard is complete. Every file is written under a
temporary name and renamed, so a reader never sees a partial file.
``finalize_shard_set`` writes ``sizes.json`` and ``manifest.json`` for the set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from components.data.atomic_files import TMP_SUFFIX, write_json_atomic

MANIFEST_VERSION = 1


def shard_name(shard_id: int) -> str:
    return f"{shard_id:05d}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _member_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True).encode("utf-8")
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


def write_shard(
    out_dir: str | Path,
    shard_id: int,
    samples: Iterable[dict[str, Any]],
    stats: dict[str, Any] | Callable[[], dict[str, Any]],
    rows: pa.Table | Callable[[], pa.Table] | None = None,
) -> dict[str, Any]:
    """Write one complete shard and return its stats (with ``count``, ``bytes`` and ``sha256`` added).

    ``samples`` are webdataset sample dicts: a dot-free ``__key__`` and one
    entry per member extension (``jpg`` bytes, ``txt`` str, ``json`` dict, ...).
    They may be a generator that is still producing; ``stats`` and ``rows`` may
    then be functions, called once every sample is written.
    """
    out = Path(out_dir)
    name = shard_name(shard_id)
    tar_path = out / f"{name}.tar"
    tmp_tar = out / f"{name}.tar{TMP_SUFFIX}"
    count = 0
    with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            _add_sample(tar, sample)
            count += 1
    os.replace(tmp_tar, tar_path)
    rows = rows() if callable(rows) else rows
    stats = stats() if callable(stats) else stats
    if rows is not None:
        tmp_rows = out / f"{name}.parquet{TMP_SUFFIX}"
        pq.write_table(rows, tmp_rows)
        os.replace(tmp_rows, out / f"{name}.parquet")
    stats = {**stats, "shard": name, "count": count, "bytes": tar_path.stat().st_size, "sha256": file_sha256(tar_path)}
    write_json_atomic(out / f"{name}_stats.json", stats)
    return stats


def completed_shards(out_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Stats of every complete shard in ``out_dir``, by shard id."""
    done = {}
    for path in sorted(Path(out_dir).glob("*_stats.json")):
        done[int(path.name.split("_")[0])] = json.loads(path.read_text())
    return done


def remove_partial_files(out_dir: str | Path) -> None:
    """Delete temporaries left by an interrupted writer, and tars whose stats never arrived."""
    out = Path(out_dir)
    for tmp in out.glob(f"*{TMP_SUFFIX}"):
        tmp.unlink()
    done = completed_shards(out)
    for path in list(out.glob("*.tar")) + list(out.glob("[0-9]*.parquet")):
        if int(path.name.split(".")[0]) not in done:
            path.unlink()


def finalize_shard_set(out_dir: str | Path, source: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Write ``sizes.json`` and ``manifest.json`` from the complete shards; return the manifest.

    The content hash covers each shard's name and tar digest in order, so it
    changes exactly when the samples do: it is the lineage that runs record.
    """
    out = Path(out_dir)
    shards = completed_shards(out)
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
    }
    write_json_atomic(out / "sizes.json", sizes)
    write_json_atomic(out / "manifest.json", manifest)
    return manifest
