"""COCO ingestion: an instances file and its images → a detection shard set, through the one shard stage.

The two parts fed to ``components/data/shards/shard_stage.py`` (which plans, resumes, runs one Ray task per
shard and writes the manifest):

- ``CocoReader``: one row per image, with its checked boxes (``coco_annotations.py``);
- ``CocoShardBuilder``: one shard's images → ``.jpg`` + ``.json`` samples (``coco_shard.py``).

Added to the manifest, beside the stage's counts (``errors`` there are the skipped images, by category):

- ``categories``: ``[{"id", "name", "supercategory"}, …]`` by id, as the file lists them;
- ``classes``: ``{"<category id>": name}``, the map training and evaluation read. COCO's ids are kept as they
  are (sparse: 1 … 90 for COCO's 80), so a model's class index is the category id and no table translates them;
- ``annotations``: what became of the file's annotations (``in_file``, ``kept``, ``crowd``, ``clipped_box``,
  ``dropped`` by category, every category present even at 0), and ``images_without_annotations``.

The annotation file's hash and the images folder are in ``source``, so the set's fingerprint changes with either,
and a folder of shards made from another file or other settings is refused rather than resumed.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from components.data.ingest.coco_annotations import CocoAnnotations, CocoReader
from components.data.ingest.coco_shard import CocoConfig, CocoShardBuilder
from components.data.shards.shard_stage import Planned, ShardDone, build_shard_set


def coco_manifest_extra(coco: CocoAnnotations) -> dict[str, Any]:
    """The manifest's ``categories``, ``classes``, ``annotations`` and ``images_without_annotations``."""
    return {"categories": [asdict(c) for c in coco.categories],
            "classes": {str(c.id): c.name for c in coco.categories},
            "annotations": coco.counts, "images_without_annotations": coco.images_without_annotations}


def shard_coco(
    reader: CocoReader,
    out_dir: str | Path,
    cfg: CocoConfig,
    images_per_shard: int,
    processes: int | None = None,
    on_planned: Planned | None = None,
    on_shard_done: ShardDone | None = None,
) -> dict[str, Any]:
    """Write the missing shards of ``reader``'s images into ``out_dir`` (a folder or ``s3://…``); return the manifest.

    A rerun after a crash completes the missing shards and gives the set an uninterrupted run gives.
    """
    builder = CocoShardBuilder(reader.images_root, cfg)
    return build_shard_set(reader, builder, out_dir, cfg.fingerprint(), images_per_shard, processes,
                           on_planned=on_planned, on_shard_done=on_shard_done,
                           manifest_extra=coco_manifest_extra(reader.coco))
