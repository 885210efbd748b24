"""``tvp inspect``: what a shard set holds, from its stats files, and a contact sheet of its pictures."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

from components.data.shards.contact_sheet import contact_sheet
from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import completed_shards, shard_name


def _megabytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def summarize(shard_dir: str | Path) -> dict[str, Any]:
    """Counts over the complete shards (an unfinished set is summarized as far as it got)."""
    store = ShardStore(shard_dir)
    shards = completed_shards(store)
    if not shards:
        raise ShardSetError(f"{shard_dir} holds no complete shards (no NNNNN_stats.json)")
    errors: dict[str, int] = {}
    for stats in shards.values():
        for category, n in stats.get("errors", {}).items():
            errors[category] = errors.get(category, 0) + n
    rows = sum(s.get("input_rows", s["count"]) for s in shards.values())
    samples = sum(s["count"] for s in shards.values())
    return {
        "shards": len(shards), "finished": store.exists("manifest.json"),
        "input_rows": rows, "samples": samples, "bytes": sum(s["bytes"] for s in shards.values()),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "success_rate": samples / rows if rows else 0.0,
    }


def _tar_samples(data: bytes) -> Iterator[tuple[bytes, str]]:
    """(jpg, caption) of each sample of a tar, in order; members of a sample are adjacent."""
    pictures: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            if extension == "jpg":
                pictures[key] = tar.extractfile(member).read()
            elif extension == "txt":
                captions[key] = tar.extractfile(member).read().decode("utf-8", "replace")
    for key, picture in pictures.items():
        yield picture, captions.get(key, "")


def _picked_samples(store: ShardStore, count: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``count`` samples spread over the shards, chosen reproducibly; reads only the shards it needs."""
    tars = [f"{shard_name(i)}.tar" for i in sorted(completed_shards(store))]
    chosen = random.Random(seed).sample(tars, min(len(tars), count))
    per_shard = -(-count // max(1, len(chosen)))
    picked: list[tuple[bytes, str]] = []
    for tar in chosen:
        picked.extend(list(_tar_samples(store.read_bytes(tar)))[:per_shard])
    return picked[:count]


def inspect_shards(shard_dir: str | Path, sheet_path: str | Path | None = None, samples: int = 24,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Print the summary and write the contact sheet; return the summary (with ``contact_sheet``)."""
    store = ShardStore(shard_dir)
    summary = summarize(shard_dir)
    echo(f"{shard_dir}: {summary['shards']} shards{'' if summary['finished'] else ' (unfinished: no manifest yet)'}, "
         f"{_megabytes(summary['bytes'])}")
    echo(f"  {summary['samples']} samples from {summary['input_rows']} input rows "
         f"({100 * summary['success_rate']:.1f}% succeeded)")
    for category, n in summary["errors"].items():
        echo(f"  {category:<18} {n}")
    picked = _picked_samples(store, samples)
    if picked:
        out = io.BytesIO()
        contact_sheet(picked).save(out, format="JPEG", quality=90)
        if sheet_path:
            Path(sheet_path).write_bytes(out.getvalue())
        else:
            store.write_bytes("contact_sheet.jpg", out.getvalue())
        summary["contact_sheet"] = str(sheet_path or store.path("contact_sheet.jpg"))
        echo(f"  contact sheet of {len(picked)} pictures: {summary['contact_sheet']}")
    return summary
