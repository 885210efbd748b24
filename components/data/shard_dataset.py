"""Shard sets as Ray Datasets, for training: raw members, decoded by the task's batch function."""

from __future__ import annotations

from pathlib import Path

import ray.data

from components.data.shard_reader import shard_paths


def read_shard_dataset(shard_dir: str | Path, columns: list[str]) -> ray.data.Dataset:
    """A Dataset with one row per sample and one bytes column per member in ``columns``.

    ``decoder=None`` keeps members as bytes: nothing is unpickled or decoded here.
    """
    return ray.data.read_webdataset(shard_paths(shard_dir), decoder=None, suffixes=columns).select_columns(columns)
