"""Image-folder ingestion: a class-per-folder tree → a classification shard set, through the one shard stage.

The two parts fed to ``components/data/shards/shard_stage.py`` (which plans, resumes, runs one Ray task per
shard and writes the manifest):

- ``ImageFolderReader``: one split's listed files in path order (``image_folder.py``);
- ``ImageFolderShardBuilder``: one shard's files → ``.jpg`` + ``.cls`` + ``.json`` samples
  (``image_folder_shard.py``).

The class map goes into the manifest as ``classes`` (``{"0": "name", …}``, the key training and evaluation
read) and into the config, so it is part of the fingerprint: the training and held-out sets of one ingestion
carry the same map, and a set is never resumed under another.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from components.data.ingest.image_folder import ImageFolderReader
from components.data.ingest.image_folder_shard import ImageFolderConfig, ImageFolderShardBuilder
from components.data.shards.shard_stage import Planned, ShardDone, build_shard_set


def class_map(classes: tuple[str, ...]) -> dict[str, str]:
    """The manifest's ``classes``: index (a JSON key, so a string) → name."""
    return {str(i): name for i, name in enumerate(classes)}


def shard_image_folder(
    reader: ImageFolderReader,
    classes: tuple[str, ...],
    out_dir: str | Path,
    cfg: ImageFolderConfig,
    images_per_shard: int,
    processes: int | None = None,
    on_planned: Planned | None = None,
    on_shard_done: ShardDone | None = None,
) -> dict[str, Any]:
    """Write the missing shards of ``reader``'s files into ``out_dir`` (a folder or ``s3://…``); return the manifest.

    ``classes`` is the class list the labels index (the training tree's, also for a separate held-out tree).
    A folder holding shards made from other files or settings is refused (``ShardSetError``); a rerun after
    a crash completes the missing shards and gives the set an uninterrupted run gives.
    """
    classes_json = class_map(classes)
    config = {"image": asdict(cfg.image), "max_bytes": cfg.max_bytes, "classes": classes_json}
    builder = ImageFolderShardBuilder(reader.tree.location, classes, cfg)
    return build_shard_set(reader, builder, out_dir, config, images_per_shard, processes, on_planned=on_planned,
                           on_shard_done=on_shard_done, manifest_extra={"classes": classes_json})
