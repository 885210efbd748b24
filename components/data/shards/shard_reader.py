"""Reading complete shard sets: the manifest, the shard list, raw samples. Never unpickles.

Thin wrappers over ``ShardSet`` (``shard_set.py``), which reads folders and
object storage alike and indexes sets made by other tools. Samples come back
undecoded (member name → bytes): decoding is the job of the task that knows
what the members mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

from components.errors import TvpError


class ShardSetError(TvpError, ValueError):
    """A location that is not a usable shard set; the message names it and the problem in one line."""


# ShardSet is imported inside the functions: shard_set.py imports ShardSetError from here.


def read_manifest(shard_dir: str | Path, index_dir: str | Path | None = None) -> dict[str, Any]:
    from components.data.shards.shard_set import ShardSet

    return ShardSet.open(shard_dir, index_dir).manifest


def shard_paths(shard_dir: str | Path, index_dir: str | Path | None = None) -> list[str]:
    """Paths or URIs of the complete shards, in order."""
    from components.data.shards.shard_set import ShardSet

    return [ref.url for ref in ShardSet.open(shard_dir, index_dir).refs]


def iter_samples(shard_dir: str | Path, members: Sequence[str] | None = None,
                 index_dir: str | Path | None = None) -> Iterator[dict[str, Any]]:
    """Every sample of a shard set in shard order, members as raw bytes (keys without the dot) and ``__key__``."""
    from components.data.shards.shard_set import ShardSet

    yield from ShardSet.open(shard_dir, index_dir).iter_samples(members)
