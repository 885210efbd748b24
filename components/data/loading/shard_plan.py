"""Which shards each training worker reads, in which order: a pure function of (seed, epoch, rank).

Every epoch the shard list is shuffled with a seed derived from (seed,
epoch) and dealt out round-robin to the ranks, so every rank knows its own
samples and their order without talking to the others. That makes a data
position exact: (epoch, steps taken in the epoch) says which samples were
seen, and a resumed run skips exactly those.

Several shard sets can be mixed: with weights, each epoch draws shards with
replacement (open_clip's "resampled" mode) until ``samples_per_epoch`` is
reached; without weights every shard of every set is read once per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_set import ShardRef, ShardSet, shard_url
from components.data.shards.shard_store import ShardStore

__all__ = ["ShardRef", "ShardSource", "EpochPlanner", "read_shard_refs", "epoch_shards", "rank_shards",
           "steps_in_epoch"]


@dataclass(frozen=True)
class ShardSource:
    """A shard set (folder or ``s3://``/``gs://`` URI) and its sampling weight when sets are mixed.

    ``index_dir`` is where the index of a foreign set that cannot be written beside its shards lives
    (``shard_set.work_index_dir(WORKDIR)``); workers must see it, as they see the shards.
    """

    path: str
    weight: float = 1.0
    index_dir: str | None = None


def read_shard_refs(shard_dir: str | Path, index_dir: str | Path | None = None) -> list[ShardRef]:
    """The complete shards of a set, in name order: from its ``sizes.json`` when it has one (one small read,
    which is what every worker does), else through ``ShardSet.open`` (which indexes a foreign set)."""
    store = ShardStore(shard_dir)
    if store.exists("sizes.json"):
        sizes = store.read_json("sizes.json")
        return [ShardRef(shard_url(store, name), int(count)) for name, count in sorted(sizes.items())]
    return ShardSet.open(shard_dir, index_dir).refs


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([abs(k) for k in key])


def epoch_shards(
    sources: list[list[ShardRef]],
    weights: list[float] | None,
    seed: int,
    epoch: int,
    samples_per_epoch: int | None = None,
) -> list[ShardRef]:
    """The shards of one epoch in reading order (before they are dealt to ranks)."""
    rng = _rng(seed, epoch)
    if samples_per_epoch is None:
        if weights is not None and len(set(weights)) > 1:
            raise ValueError("mixing shard sets with different weights needs samples_per_epoch (resampled epochs)")
        every = [ref for refs in sources for ref in refs]
        return [every[i] for i in rng.permutation(len(every))]
    probabilities = np.asarray(weights or [1.0] * len(sources), dtype=float)
    if (probabilities <= 0).any():
        raise ValueError("shard set weights must be positive")
    probabilities /= probabilities.sum()
    drawn: list[ShardRef] = []
    total = 0
    while total < samples_per_epoch:
        refs = sources[rng.choice(len(sources), p=probabilities)]
        ref = refs[rng.integers(len(refs))]
        drawn.append(ref)
        total += ref.num_samples
    return drawn


def rank_shards(plan: list[ShardRef], rank: int, world: int) -> list[ShardRef]:
    """Rank ``rank``'s share of an epoch's shards, dealt round-robin."""
    if len(plan) < world:
        raise ShardSetError(f"{len(plan)} shards cannot feed {world} workers: write smaller shards (--rows-per-shard) "
                            "or use fewer workers (--set train.num_workers=N)")
    return plan[rank::world]


def steps_in_epoch(plan: list[ShardRef], world: int, samples_per_rank_step: int) -> int:
    """Optimizer steps every rank can take: the rank with the fewest samples sets it (DDP needs equal steps)."""
    per_rank = [sum(ref.num_samples for ref in rank_shards(plan, r, world)) for r in range(world)]
    return min(per_rank) // samples_per_rank_step


class EpochPlanner:
    """Every epoch's shard order and step count for a set of sources: the same on every rank and the driver."""

    def __init__(self, sources: list[ShardSource], seed: int, samples_per_epoch: int | None = None):
        self.refs = [read_shard_refs(source.path, source.index_dir) for source in sources]
        self.weights = [source.weight for source in sources] if len(sources) > 1 else None
        self.seed, self.samples_per_epoch = seed, samples_per_epoch

    def shards(self, epoch: int) -> list[ShardRef]:
        return epoch_shards(self.refs, self.weights, self.seed, epoch, self.samples_per_epoch)

    def steps(self, epoch: int, world: int, samples_per_rank_step: int) -> int:
        return steps_in_epoch(self.shards(epoch), world, samples_per_rank_step)
