"""Reading complete shard sets: the manifest, the shard list, raw samples. Never unpickles.

Samples come back undecoded (member name → bytes): decoding is the job of
the task that knows what the members mean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


class ShardSetError(ValueError):
    pass


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    path = Path(shard_dir) / "manifest.json"
    if not path.is_file():
        raise ShardSetError(f"{shard_dir} is not a finished shard set: it has no manifest.json")
    return json.loads(path.read_text())


def shard_paths(shard_dir: str | Path) -> list[str]:
    """Tar paths of the complete shards listed in ``sizes.json``, in order."""
    sizes_path = Path(shard_dir) / "sizes.json"
    if not sizes_path.is_file():
        raise ShardSetError(f"{shard_dir} is not a finished shard set: it has no sizes.json")
    sizes = json.loads(sizes_path.read_text())
    return [str(Path(shard_dir).resolve() / name) for name in sorted(sizes)]


def iter_samples(shard_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Every sample of a shard set in shard order, members as raw bytes (keys without the dot)."""
    import webdataset as wds  # here, not at the top: it imports torch, which ingestion workers do not need

    dataset = wds.WebDataset(shard_paths(shard_dir), shardshuffle=False, empty_check=False)
    for sample in dataset:
        yield {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
