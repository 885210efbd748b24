"""A training worker's own batches: its planned shards, read in order through Ray Data.

Reading preserves shard and sample order, and the local shuffle buffer is
seeded, so a rank's batch sequence for an epoch is a function of its shard
list and seed alone; a resumed worker skips the batches it already trained on.
"""

from __future__ import annotations

import hashlib
from itertools import islice
from typing import Callable, Iterator

import numpy as np
import ray.data
import torch

from components.data.loading.shard_plan import ShardRef


SAMPLE_ID = "sample_id"


def sample_id(key: str) -> int:
    """An int64 for a sample key: the number itself for tvp's row-position keys, else a stable hash."""
    if key.isdigit() and len(key) < 19:
        return int(key)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def _with_sample_ids(batch: dict[str, np.ndarray], transform: Callable) -> dict[str, np.ndarray]:
    keys = batch.pop("__key__")
    out = transform(batch)
    out[SAMPLE_ID] = np.array([sample_id(str(k)) for k in keys], dtype=np.int64)
    return out


def rank_batches(
    shards: list[ShardRef],
    columns: list[str],
    transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    micro_batch_size: int,
    shuffle_buffer: int,
    seed: int,
    skip: int = 0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Micro-batches of ``transform``'s output plus ``sample_id`` (int64) from ``shards``.

    The first ``skip`` micro-batches are dropped: a resumed worker has trained on them already.
    """
    dataset = ray.data.read_webdataset(
        [ref.url for ref in shards], decoder=None, suffixes=columns, override_num_blocks=len(shards)
    ).select_columns(["__key__", *columns])
    dataset.context.execution_options.preserve_order = True  # order must not depend on task timing
    dataset = dataset.map_batches(_with_sample_ids, fn_kwargs={"transform": transform}, batch_format="numpy")
    batches = dataset.iter_torch_batches(
        batch_size=micro_batch_size,
        drop_last=True,
        local_shuffle_buffer_size=shuffle_buffer or None,
        local_shuffle_seed=seed if shuffle_buffer else None,
        device="cpu",
    )
    return islice(iter(batches), skip, None)
