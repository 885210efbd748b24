"""``tvp ingest coco``: a COCO instances file and its images → a detection shard set, with progress and a summary.

Layout written:

- ``tvp ingest coco ANNOTATIONS --images DIR --output SHARDS``: SHARDS is the shard set itself;
- ``tvp ingest coco --sample --output DIR``: the embedded digit scenes at ``DIR/scenes/`` (``images/``,
  ``instances_train.json``, ``instances_val.json``), ingested into ``DIR/train`` and ``DIR/heldout``.

``open_coco`` reads and checks an annotation file (a bad one fails there, before Ray starts); ``ingest_coco``
then writes each set, one after the other, resuming whatever an earlier run left.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

from components.data.ingest.coco_annotations import DROPPED, CocoReader, open_coco
from components.data.ingest.coco_shard import CocoConfig
from components.data.ingest.coco_stage import shard_coco
from components.data.ingest.digit_scenes import ANNOTATION_FILES, IMAGES_FOLDER, write_digit_scenes
from components.data.shards.shard_writer import completed_shards
from pipelines.ingest_imagefolder import Progress, set_location

SAMPLE_FOLDER = "scenes"  # where --sample writes the digit scenes, under OUTPUT
SAMPLE_SETS = {"train": "train", "heldout": "val"}  # set written under OUTPUT → the sample's split

def open_sample(output: str | Path) -> dict[str, CocoReader]:
    """Write the digit scenes under ``OUTPUT/scenes`` (once) and read their two annotation files."""
    scenes = write_digit_scenes(set_location(output, SAMPLE_FOLDER))
    images = set_location(scenes, IMAGES_FOLDER)
    return {name: open_coco(set_location(scenes, ANNOTATION_FILES[split]), images)
            for name, split in SAMPLE_SETS.items()}


def _counted(counts: dict[str, int]) -> str:
    shown = [f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if v]
    return ", ".join(shown) or "none"


def summary_lines(name: str, location: str, manifest: dict[str, Any]) -> list[str]:
    """What one set holds and what was left out of it, by category."""
    shards = completed_shards(location)
    boxes = sum(s.get("boxes", 0) for s in shards.values())
    lost = sum(s.get("boxes_of_skipped_images", 0) for s in shards.values())
    empty = sum(s.get("samples_without_boxes", 0) for s in shards.values())
    annotations = manifest["annotations"]
    return [
        f"  {name}: {manifest['num_samples']} images, {boxes} boxes in {manifest['num_shards']} shards: {location}",
        f"    images skipped: {_counted(manifest['errors'])}; kept without boxes: {empty}",
        f"    annotations: {annotations['in_file']} in the file, {annotations['kept']} kept "
        f"({annotations['crowd']} crowd, {annotations['clipped_box']} clipped_box), {lost} lost with skipped "
        f"images; dropped: {_counted({k: annotations['dropped'][k] for k in DROPPED})}",
    ]


def categories_line(manifest: dict[str, Any]) -> str:
    names = [f"{k} {v}" for k, v in manifest["classes"].items()]
    shown = ", ".join(names[:10]) + (f", … ({len(names) - 10} more)" if len(names) > 10 else "")
    return f"  {len(names)} categories (id name): {shown}"


def ingest_coco(
    readers: dict[str, CocoReader],
    locations: dict[str, str],
    cfg: CocoConfig,
    images_per_shard: int,
    processes: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Shard each reader's images into its location (same keys), resuming a previous run there; return the
    manifests by set name."""
    manifests = {}
    for name, reader in readers.items():
        progress = Progress(name, echo, interactive=echo is print and sys.stderr.isatty())
        manifests[name] = shard_coco(reader, locations[name], cfg, images_per_shard, processes,
                                     on_planned=progress.planned, on_shard_done=progress.shard_done)
    for name, manifest in manifests.items():
        for line in summary_lines(name, locations[name], manifest):
            echo(line)
    echo(categories_line(next(iter(manifests.values()))))
    return manifests
