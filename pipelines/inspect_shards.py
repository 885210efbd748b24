"""``tvp inspect``: what a shard set holds, from its stats files, and a contact sheet of its pictures."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import webdataset as wds

from components.data.contact_sheet import contact_sheet
from components.data.shard_reader import ShardSetError
from components.data.shard_writer import completed_shards, shard_name


def _megabytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def summarize(shard_dir: str | Path) -> dict[str, Any]:
    """Counts over the complete shards (an unfinished set is summarized as far as it got)."""
    shards = completed_shards(shard_dir)
    if not shards:
        raise ShardSetError(f"{shard_dir} holds no complete shards (no NNNNN_stats.json)")
    errors: dict[str, int] = {}
    for stats in shards.values():
        for category, n in stats.get("errors", {}).items():
            errors[category] = errors.get(category, 0) + n
    rows = sum(s.get("input_rows", s["count"]) for s in shards.values())
    samples = sum(s["count"] for s in shards.values())
    return {
        "shards": len(shards), "finished": (Path(shard_dir) / "manifest.json").is_file(),
        "input_rows": rows, "samples": samples, "bytes": sum(s["bytes"] for s in shards.values()),
        "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "success_rate": samples / rows if rows else 0.0,
    }


def _picked_samples(shard_dir: Path, count: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``count`` samples spread over the shards, chosen reproducibly; reads only the shards it needs."""
    tars = [shard_dir / f"{shard_name(i)}.tar" for i in sorted(completed_shards(shard_dir))]
    chosen = random.Random(seed).sample(tars, min(len(tars), count))
    per_shard = -(-count // max(1, len(chosen)))
    picked: list[tuple[bytes, str]] = []
    for tar in chosen:
        for n, sample in enumerate(wds.WebDataset(str(tar), shardshuffle=False, empty_check=False)):
            if n >= per_shard or len(picked) >= count:
                break
            if "jpg" in sample:
                picked.append((sample["jpg"], sample.get("txt", b"").decode("utf-8", "replace")))
    return picked


def inspect_shards(shard_dir: str | Path, sheet_path: str | Path | None = None, samples: int = 24,
                   echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Print the summary and write the contact sheet; return the summary (with ``contact_sheet``)."""
    out = Path(shard_dir)
    summary = summarize(out)
    echo(f"{out}: {summary['shards']} shards{'' if summary['finished'] else ' (unfinished: no manifest yet)'}, "
         f"{_megabytes(summary['bytes'])}")
    echo(f"  {summary['samples']} samples from {summary['input_rows']} input rows "
         f"({100 * summary['success_rate']:.1f}% succeeded)")
    for category, n in summary["errors"].items():
        echo(f"  {category:<18} {n}")
    picked = _picked_samples(out, samples)
    if picked:
        sheet = Path(sheet_path) if sheet_path else out / "contact_sheet.jpg"
        contact_sheet(picked).save(sheet, quality=90)
        summary["contact_sheet"] = str(sheet)
        echo(f"  contact sheet of {len(picked)} pictures: {sheet}")
    return summary
