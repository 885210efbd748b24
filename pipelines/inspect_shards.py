"""``tvp inspect``: what a shard set holds, and a contact sheet of its pictures.

A set tvp wrote is summarized from its stats files, so an unfinished one can
be inspected too. A set another tool wrote (img2dataset's layout, no tvp
manifest) is summarized from its index (``ShardSet``), made now when asked
(``index=True``), else from img2dataset's own stats files when it has them.
Sets may live in folders or object storage (``s3://``, ``gs://``).
"""

from __future__ import annotations

import io
import json
import random
from itertools import islice
from pathlib import Path
from typing import Any, Callable

import pyarrow.fs as pafs

from components.data.shards.contact_sheet import contact_sheet
from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_set import ShardSet, shard_url
from components.data.shards.shard_store import ShardStore
from components.data.shards.tar_samples import iter_shard_samples

_STATS = "_stats.json"


def _megabytes(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _tvp_stats(store: ShardStore, names: list[str]) -> dict[str, dict[str, Any]] | None:
    """Stats of tvp's complete shards by tar name, or None when the stats files are not tvp's."""
    stats = {f"{n.removesuffix(_STATS)}.tar": store.read_json(n) for n in names if n.endswith(_STATS)}
    if not stats or not all("sha256" in s and "count" in s for s in stats.values()):
        return None
    return stats


def _tvp_summary(store: ShardStore, stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for shard in stats.values():
        for category, n in shard.get("errors", {}).items():
            errors[category] = errors.get(category, 0) + n
    rows = sum(s.get("input_rows", s["count"]) for s in stats.values())
    samples = sum(s["count"] for s in stats.values())
    finished = store.exists("manifest.json")
    return {
        "shards": len(stats), "finished": finished, "layout": "tvp",
        "input_rows": rows, "samples": samples, "bytes": sum(s["bytes"] for s in stats.values()),
        "errors": errors, "tars": sorted(stats), "incomplete": [],
        "content_hash": store.read_json("manifest.json")["content_hash"] if finished else None, "index": None,
    }


def _indexed_summary(shard_set: ShardSet) -> dict[str, Any]:
    manifest = shard_set.manifest
    return {
        "shards": len(shard_set.refs), "finished": True, "layout": manifest.get("source_layout", "webdataset"),
        "input_rows": manifest["num_input_rows"], "samples": shard_set.num_samples,
        "bytes": sum(manifest.get("shard_bytes", {}).values()), "errors": dict(manifest.get("errors", {})),
        "tars": [ref.url.rsplit("/", 1)[-1] for ref in shard_set.refs], "incomplete": shard_set.incomplete_shards,
        "content_hash": shard_set.content_hash, "index": shard_set.index_location,
    }


def _img2dataset_summary(store: ShardStore, location: str) -> dict[str, Any]:
    """A foreign set not indexed yet, from img2dataset's stats (``successes`` are the samples in the tar)."""
    listing = store.fs.get_file_info(pafs.FileSelector(store.root, allow_not_found=True))
    sizes = {i.base_name: i.size for i in listing if i.base_name.endswith(".tar")}
    stats = {f"{n.removesuffix(_STATS)}.tar": store.read_json(n) for n in store.names() if n.endswith(_STATS)}
    stats = {tar: s for tar, s in stats.items() if tar in sizes}
    if not stats or not all(isinstance(s.get("successes"), int) and "count" in s for s in stats.values()):
        raise ShardSetError(f"{location} has no tvp manifest and no stats that give sample counts: "
                            f"index it with `tvp inspect {location} --index`")
    errors: dict[str, int] = {}
    for shard in stats.values():
        for category in ("failed_to_download", "failed_to_resize"):
            errors[category] = errors.get(category, 0) + int(shard.get(category, 0))
    return {
        "shards": len(stats), "finished": False, "layout": "img2dataset",
        "input_rows": sum(int(s["count"]) for s in stats.values()),
        "samples": sum(s["successes"] for s in stats.values()), "bytes": sum(sizes[t] for t in stats),
        "errors": errors, "tars": sorted(stats), "incomplete": sorted(set(sizes) - set(stats)),
        "content_hash": None, "index": None,
    }


def _open_store(location: str) -> ShardStore:
    try:
        return ShardStore(location)
    except (ValueError, OSError) as err:
        raise ShardSetError(f"{location}: cannot open it as a shard set location ({err})") from err


def summarize(shard_dir: str | Path, index: bool = False, index_dir: str | Path | None = None) -> dict[str, Any]:
    """Counts over the complete shards (an unfinished tvp set is summarized as far as it got).

    ``index``: index a foreign set now (beside its shards, else under ``index_dir``) and summarize the index.
    """
    location = str(shard_dir)
    if index:
        summary = _indexed_summary(ShardSet.index(location, index_dir))
    else:
        store = _open_store(location)
        names = store.names()
        stats = _tvp_stats(store, names)
        if stats is not None:
            summary = _tvp_summary(store, stats)
        else:
            found = ShardSet.find(location, index_dir)
            if found is not None:
                summary = _indexed_summary(found)
            elif any(n.endswith(_STATS) for n in names):
                summary = _img2dataset_summary(store, location)
            elif "manifest.json" not in names and any(n.endswith(".tar") for n in names):
                raise ShardSetError(f"{location} has no tvp manifest and no stats files: "
                                    f"index it with `tvp inspect {location} --index`")
            else:
                ShardSet.open(location)  # the one-line reason it is not a shard set
                raise ShardSetError(f"{location} holds no complete shards")
    summary["errors"] = dict(sorted(summary["errors"].items(), key=lambda kv: -kv[1]))
    summary["success_rate"] = summary["samples"] / summary["input_rows"] if summary["input_rows"] else 0.0
    return summary


def _picked_samples(store: ShardStore, tars: list[str], count: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """``count`` (jpg, caption) pairs spread over the shards, chosen reproducibly; streams only what it needs.
    The caption is the sample's ``.txt``, else its class (``.cls``, named by the manifest's ``classes``)."""
    chosen = random.Random(seed).sample(tars, min(len(tars), count))
    per_shard = -(-count // max(1, len(chosen)))
    classes = _class_names(store)
    picked: list[tuple[bytes, str]] = []
    for tar in chosen:
        samples = (s for s in iter_shard_samples(shard_url(store, tar), ["jpg", "txt", "cls"]) if "jpg" in s)
        picked.extend((s["jpg"], _caption(s, classes)) for s in islice(samples, per_shard))
    return picked[:count]


def _class_names(store: ShardStore) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in (json.loads(store.read_bytes("manifest.json")).get("classes") or {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def _caption(sample: dict[str, bytes], classes: dict[str, str]) -> str:
    if "txt" in sample:
        return sample["txt"].decode("utf-8", "replace")
    if "cls" in sample:
        label = sample["cls"].decode("utf-8", "replace").strip()
        return f"{classes.get(label, label)} (class {label})"
    return ""


def _write_sheet(store: ShardStore, data: bytes, sheet_path: str | Path | None, summary: dict[str, Any]) -> str:
    """Where the sheet went: ``sheet_path``, else beside the shards, else (read-only set) beside its index."""
    if sheet_path:
        Path(sheet_path).write_bytes(data)
        return str(sheet_path)
    try:
        store.write_bytes("contact_sheet.jpg", data)
        return store.path("contact_sheet.jpg") if store.is_local else f"{store.location.rstrip('/')}/contact_sheet.jpg"
    except OSError:
        if not summary["index"]:
            raise
        index_store = ShardStore(summary["index"])
        index_store.write_bytes("contact_sheet.jpg", data)
        return f"{summary['index'].rstrip('/')}/contact_sheet.jpg"


def inspect_shards(shard_dir: str | Path, sheet_path: str | Path | None = None, samples: int = 24,
                   echo: Callable[[str], None] = print, index: bool = False,
                   index_dir: str | Path | None = None) -> dict[str, Any]:
    """Print the summary and write the contact sheet; return the summary (with ``contact_sheet``)."""
    summary = summarize(shard_dir, index, index_dir)
    store = ShardStore(shard_dir)
    state = "" if summary["finished"] else " (unfinished: no manifest yet)"
    if summary["layout"] != "tvp":
        state = f" ({summary['layout']} layout, indexed by tvp)" if summary["finished"] else (
            f" ({summary['layout']} layout, not indexed yet: tvp inspect {shard_dir} --index)")
    echo(f"{shard_dir}: {summary['shards']} shards{state}, {_megabytes(summary['bytes'])}")
    echo(f"  {summary['samples']} samples from {summary['input_rows']} input rows "
         f"({100 * summary['success_rate']:.1f}% succeeded)")
    for category, n in summary["errors"].items():
        echo(f"  {category:<18} {n}")
    if summary["incomplete"]:
        echo(f"  left out as incomplete (no _stats.json): {', '.join(summary['incomplete'])}")
    if summary["index"] and summary["layout"] != "tvp":
        echo(f"  index: {summary['index']}  content hash {summary['content_hash'][:16]}")
    picked = _picked_samples(store, summary.pop("tars"), samples)
    if picked:
        out = io.BytesIO()
        contact_sheet(picked).save(out, format="JPEG", quality=90)
        summary["contact_sheet"] = _write_sheet(store, out.getvalue(), sheet_path, summary)
        echo(f"  contact sheet of {len(picked)} pictures: {summary['contact_sheet']}")
    return summary
