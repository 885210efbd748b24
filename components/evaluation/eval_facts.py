"""The facts an evaluation needs about a held-out shard set as a whole: its class names, its size.

They come from the set's manifest (``classes``: label id → name). A set
whose manifest has no class list (ingested before tvp recorded one, or made
by another tool) is read once here, in the driver, for the ``label`` and
``label_name`` of every sample's ``.json``; workers never derive facts from the
samples they happen to see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.data.shards.shard_set import ShardSet


def eval_facts(location: str | Path, index_dir: str | Path | None = None) -> dict[str, Any]:
    """``{"classes": {"0": name, ...}, "num_samples": N, "content_hash": H}`` for a shard set."""
    shard_set = ShardSet.open(location, index_dir)
    manifest = shard_set.manifest
    classes = {str(k): str(v) for k, v in (manifest.get("classes") or {}).items()}
    if not classes:
        classes = _scan_classes(shard_set)
    return {"classes": classes, "num_samples": int(manifest.get("num_samples", 0)),
            "content_hash": shard_set.content_hash}


def _scan_classes(shard_set: ShardSet) -> dict[str, str]:
    found: dict[int, str] = {}
    for sample in shard_set.iter_samples(["json"]):
        try:
            meta = json.loads(sample.get("json", b"{}"))
        except ValueError:
            continue
        if isinstance(meta, dict) and "label" in meta:
            label = int(meta["label"])
            found.setdefault(label, str(meta.get("label_name", label)))
    return {str(k): v for k, v in sorted(found.items())}
