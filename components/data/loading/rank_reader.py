"""A training worker's own batches: its planned shards, read in a fixed order, shuffled by seed.

The order of a rank's samples in an epoch is a function of its shard list
and seed alone, and it is known before anything is read: consecutive shards
form shuffle windows of at least ``shuffle_window`` samples (their sizes are
in the shard set's ``sizes.json``), and each window is read whole and put in
a seeded random order. So a resumed worker that has trained on ``skip``
samples passes over every window it finished without opening its shards, and
reads only the window it was in, dropping what it had seen.

Decoding runs in ``loader_workers`` processes of a torch ``DataLoader``
beside the training process (0: in the training process). Every loader
process walks the same sample order but transforms only its own share of the
micro-batches, and the DataLoader hands them back in order, so the batch
sequence does not depend on the number of loader processes. Loader processes
are forked from a fork server, never from the training process: a Ray Train
worker runs several threads, and a child forked while one of them held a lock
(torch's lazy seeding, seen here) hangs forever.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from itertools import islice
from collections.abc import Sequence
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from components.data.loading.shard_plan import ShardRef
from components.data.shards.tar_samples import KEY, iter_shard_samples

SAMPLE_ID = "sample_id"
Transform = Callable[[dict[str, np.ndarray], Sequence[np.random.Generator]], dict[str, np.ndarray]]
OpenSamples = Callable[[str, Sequence[str]], Iterator[dict[str, bytes]]]


def sample_id(key: str) -> int:
    """An int64 for a sample key: the number itself for tvp's row-position keys, else a stable hash."""
    if key.isdigit() and len(key) < 19:
        return int(key)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def sample_rng(seed: int, epoch: int, sample: int) -> np.random.Generator:
    """The generator of one sample's random choices in one epoch (masks, crops): replays are identical."""
    return np.random.default_rng([seed, epoch, sample])


class SampleRngs(Sequence):
    """One generator per sample of a batch, each made when first asked for: tasks without randomness pay
    nothing (a generator costs about as much to create as decoding a small image)."""

    def __init__(self, seed: int, epoch: int, ids: np.ndarray):
        self._seed, self._epoch, self._ids = seed, epoch, ids
        self._made: dict[int, np.random.Generator] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index not in self._made:
            self._made[index] = sample_rng(self._seed, self._epoch, int(self._ids[index]))
        return self._made[index]


def shuffle_windows(shards: Sequence[ShardRef], window: int) -> list[list[ShardRef]]:
    """Consecutive shards grouped until each group holds at least ``window`` samples (0: one shard each)."""
    groups: list[list[ShardRef]] = []
    current: list[ShardRef] = []
    for ref in shards:
        current.append(ref)
        if sum(r.num_samples for r in current) >= max(window, 1):
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def rank_samples(
    shards: Sequence[ShardRef],
    members: Sequence[str],
    shuffle_window: int,
    seed: int,
    skip: int = 0,
    open_samples: OpenSamples = iter_shard_samples,
) -> Iterator[dict[str, bytes]]:
    """A rank's raw samples in epoch order, the first ``skip`` left out; finished windows are never opened."""
    for index, group in enumerate(shuffle_windows(shards, shuffle_window)):
        size = sum(ref.num_samples for ref in group)
        if skip >= size:
            skip -= size
            continue
        if shuffle_window <= 0:
            yield from islice((s for ref in group for s in open_samples(ref.url, members)), skip, None)
        else:
            samples = [s for ref in group for s in open_samples(ref.url, members)]
            order = np.random.default_rng([seed, index]).permutation(len(samples))
            yield from (samples[i] for i in order[skip:])
        skip = 0


def _columns(samples: list[dict[str, bytes]], members: Sequence[str]) -> dict[str, np.ndarray]:
    missing = [m for m in members if any(m not in s for s in samples)]
    if missing:
        key = next(s[KEY] for s in samples if missing[0] not in s)
        raise KeyError(f"sample {key!r} has no {missing[0]!r} member")
    return {m: np.array([s[m] for s in samples], dtype=object) for m in members}


class RankBatches(IterableDataset):
    """Micro-batches (dicts of tensors, with ``sample_id``) of one rank's epoch; see the module docstring."""

    def __init__(self, shards: Sequence[ShardRef], members: Sequence[str], transform: Transform, batch_size: int,
                 shuffle_window: int, seed: int, epoch: int, skip_samples: int = 0, drop_last: bool = True,
                 open_samples: OpenSamples = iter_shard_samples):
        self.shards, self.members, self.transform = list(shards), list(members), transform
        self.batch_size, self.shuffle_window, self.seed, self.epoch = batch_size, shuffle_window, seed, epoch
        self.skip_samples, self.drop_last, self.open_samples = skip_samples, drop_last, open_samples

    def _raw_batches(self) -> Iterator[list[dict[str, bytes]]]:
        samples = rank_samples(self.shards, self.members, self.shuffle_window, self.seed, self.skip_samples,
                               self.open_samples)
        while batch := list(islice(samples, self.batch_size)):
            if len(batch) < self.batch_size and self.drop_last:
                return
            yield batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        share, shares = (info.id, info.num_workers) if info else (0, 1)
        for index, raw in enumerate(self._raw_batches()):
            if index % shares != share:
                continue
            ids = np.array([sample_id(s[KEY]) for s in raw], dtype=np.int64)
            out = self.transform(_columns(raw, self.members), SampleRngs(self.seed, self.epoch, ids))
            batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
            batch[SAMPLE_ID] = torch.from_numpy(ids)
            yield batch


def _quiet_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding is numpy and Pillow; the training process keeps the cores' threads


_FORKSERVER_STARTED = False


def _loader_context(transform: Transform) -> multiprocessing.context.BaseContext:
    """The fork server context, its server preloaded with this module and the transform's task module, so
    that each epoch's loader processes start without importing torch again."""
    global _FORKSERVER_STARTED
    if not _FORKSERVER_STARTED:
        owner = getattr(transform, "__self__", None)
        modules = [__name__] + ([type(owner).__module__] if owner is not None else [])
        multiprocessing.set_forkserver_preload(modules)
        _FORKSERVER_STARTED = True
    return multiprocessing.get_context("forkserver")


def rank_batches(
    shards: Sequence[ShardRef],
    members: Sequence[str],
    transform: Transform,
    micro_batch_size: int,
    shuffle_window: int,
    seed: int,
    epoch: int = 1,
    skip: int = 0,
    loader_workers: int = 1,
    drop_last: bool = True,
    open_samples: OpenSamples = iter_shard_samples,
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches of ``transform``'s output plus ``sample_id`` (int64) from ``shards``.

    The first ``skip`` micro-batches are left out without decoding them (a resumed worker trained on them).
    """
    dataset = RankBatches(shards, members, transform, micro_batch_size, shuffle_window, seed, epoch,
                          skip * micro_batch_size, drop_last, open_samples)
    if loader_workers <= 0:
        return iter(dataset)
    loader = DataLoader(dataset, batch_size=None, num_workers=loader_workers, worker_init_fn=_quiet_worker,
                        prefetch_factor=4, persistent_workers=False, multiprocessing_context=_loader_context(transform))
    return iter(loader)
