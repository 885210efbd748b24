"""``tvp ingest imagefolder``: a class-per-folder image tree → a training shard set (and a held-out one),
with progress and a short summary.

Layout written under OUTPUT (a folder or ``s3://…``):

- ``OUTPUT/train/``: the training set, a complete shard set (``sizes.json``, ``manifest.json`` with ``classes``);
- ``OUTPUT/heldout/``: the held-out set, when a fraction or a held-out tree is given, with the same ``classes``;
- ``OUTPUT/images/``: with ``--sample`` only, the embedded digits tree that is ingested.

``open_image_folders`` lists and checks the trees (a bad tree fails there, before Ray starts);
``ingest_image_folder`` then writes both sets, one after the other, resuming whatever an earlier run left.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from components.data.ingest.image_folder import ImageFolderReader, list_image_folder, split_readers
from components.data.ingest.image_folder_shard import ImageFolderConfig
from components.data.ingest.image_folder_stage import shard_image_folder

SAMPLE_FOLDER = "images"  # where --sample writes the digits tree, under OUTPUT


@dataclass(frozen=True)
class ImageFolderInputs:
    """What one ingestion reads: the training tree's classes and a reader per set (held-out: None if none)."""

    classes: tuple[str, ...]
    train: ImageFolderReader
    heldout: ImageFolderReader | None


def open_image_folders(root: str, heldout_root: str | None = None, heldout_fraction: float = 0.0,
                       seed: int = 0) -> ImageFolderInputs:
    """List ``root`` (and ``heldout_root``) and split them; ``ImageFolderError`` on a bad tree."""
    tree = list_image_folder(root)
    heldout = list_image_folder(heldout_root, classes=tree.classes) if heldout_root else None
    train, held = split_readers(tree, heldout, heldout_fraction, seed)
    return ImageFolderInputs(tree.classes, train, held)


def set_location(output: str | Path, split: str) -> str:
    """``OUTPUT/split`` for a folder or a URI alike."""
    return f"{str(output).rstrip('/')}/{split}"


class Progress:
    """Shards, images and images/s of one set: redrawn in place on a terminal, a line every few seconds in a log."""

    def __init__(self, name: str, echo: Callable[[str], None], interactive: bool, every_s: float = 5.0):
        self.name, self.echo, self.interactive, self.every_s = name, echo, interactive, every_s
        self.started = self.last_line = time.monotonic()
        self.files = self.images = 0

    def planned(self, shards: int, pending: int, rows: int) -> None:
        self.started = time.monotonic()
        self.echo(f"  {self.name}: {rows} files in {shards} shards; {pending} to do")

    def shard_done(self, stats: dict[str, Any], done: int, total: int) -> None:
        self.files += stats["input_rows"]
        self.images += stats["successes"]
        now = time.monotonic()
        if not self.interactive and now - self.last_line < self.every_s and done < total:
            return
        self.last_line = now
        line = (f"  shards {done}/{total}  files {self.files}  images {self.images}  "
                f"{self.files / max(now - self.started, 1e-9):.0f} files/s")
        if self.interactive:
            print("\r" + line, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            self.echo(line)


def summary_lines(manifests: dict[str, dict[str, Any]], locations: dict[str, str],
                  files_outside_classes: int, root: str) -> list[str]:
    classes = list(next(iter(manifests.values()))["classes"].values())
    lines = []
    for split, manifest in manifests.items():
        lines.append(f"  {split + ':':<8} {manifest['num_samples']} images in {manifest['num_shards']} shards: "
                     f"{locations[split]}")
    skipped: dict[str, int] = {}
    for manifest in manifests.values():
        for category, n in manifest["errors"].items():
            skipped[category] = skipped.get(category, 0) + n
    lines.append("  skipped: " + (", ".join(f"{k} {v}" for k, v in sorted(skipped.items(), key=lambda kv: (-kv[1], kv[0])))
                                  or "none"))
    shown = ", ".join(classes[:10]) + (f", … ({len(classes) - 10} more)" if len(classes) > 10 else "")
    lines.append(f"  {len(classes)} classes: {shown}")
    if files_outside_classes:
        lines.append(f"  note: {files_outside_classes} files directly in {root} are in no class folder and were "
                     "not ingested")
    return lines


def ingest_image_folder(
    inputs: ImageFolderInputs,
    output: str | Path,
    cfg: ImageFolderConfig,
    images_per_shard: int,
    processes: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Shard the training (and held-out) files into ``OUTPUT/train`` (and ``OUTPUT/heldout``), resuming a
    previous run there; return the manifests by set name."""
    readers = {"train": inputs.train, "heldout": inputs.heldout}
    manifests, locations = {}, {}
    for split, reader in readers.items():
        if reader is None:
            continue
        locations[split] = set_location(output, split)
        progress = Progress(split, echo, interactive=echo is print and sys.stderr.isatty())
        manifests[split] = shard_image_folder(reader, inputs.classes, locations[split], cfg, images_per_shard,
                                              processes, on_planned=progress.planned,
                                              on_shard_done=progress.shard_done)
    for line in summary_lines(manifests, locations, inputs.train.tree.files_outside_classes,
                              inputs.train.tree.location):
        echo(line)
    return manifests
