"""A shard set wherever it lives (a folder, ``file://``, ``s3://``, ``gs://``), whoever wrote it.

``ShardSet.open(location)`` gives the set's manifest, its complete shards in
name order (``ShardRef``: URL and sample count) and its samples as raw bytes.

A set tvp wrote carries ``sizes.json`` (shard → sample count) and
``manifest.json``; they are read as they are. A set another tool wrote in
the same layout (img2dataset, DataComp, LAION releases: ``NNNNN.tar``,
``NNNNN.parquet``, ``NNNNN_stats.json``) carries neither, and is *indexed*
on first read:

- Complete shards: when the set has ``_stats.json`` files, a tar is complete
  only when its ``NNNNN_stats.json`` exists (img2dataset writes stats last);
  the others are left out, listed in the manifest's ``incomplete_shards`` and
  logged. A set without any stats file counts every tar as complete.
- Sample counts: img2dataset's stats give ``successes``, the number of samples
  its writer put in the tar (one per image that downloaded and resized), and
  that count is used. Any other tar is streamed and its samples counted by
  key, as every reader here splits them.
- Content hash: sha256 over one line ``NAME:BYTES:COUNT\\n`` per complete
  shard in name order (tar name, tar size in bytes, sample count). Unlike
  tvp's own hash it does not read the tars' bytes, so indexing a large set
  costs one listing plus its stats files.
- The index (``sizes.json`` and a ``manifest.json`` with ``"indexed_by": "tvp"``)
  is written beside the shards, or, where that location is not writable,
  under ``index_dir`` (``index_dir/<name>-<hash of the location>/``), and
  found there next time. A found index is checked against a fresh listing:
  when shards were added, completed or rewritten, the set is indexed again
  (counts of unchanged shards are kept). Without a writable place the index
  lives in memory for this process only.

``ShardSetError`` (``components.data.shards.shard_reader``) is raised, with
one line naming the location and the problem, for anything that is not a
usable shard set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow.fs as pafs

from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_store import ShardStore
from components.data.shards.tar_samples import iter_shard_samples

log = logging.getLogger("tvp.shards")

INDEX_VERSION = 1
INDEX_FOLDER = "shard_index"
HASH_RULE = "sha256 over 'NAME:BYTES:COUNT\\n' per complete shard in name order"
_TAR = re.compile(r"^(\d+)\.tar$")
_STATS_SUFFIX = "_stats.json"
_IO_THREADS = 8  # stats files read, or tars streamed to count them, at once (I/O bound in object storage)


@dataclass(frozen=True)
class ShardRef:
    """One complete shard: an absolute local path or a full ``s3://…``/``gs://…`` URI, and its sample count."""

    url: str
    num_samples: int


def work_index_dir(workdir: str | Path) -> str:
    """Where a work directory keeps the indexes of shard sets it cannot write into."""
    return f"{str(workdir).rstrip('/')}/{INDEX_FOLDER}"


def _normalized(location: str | Path) -> str:
    location = str(location)
    if "://" not in location or location.startswith("file://"):
        return str(Path(location.removeprefix("file://")).resolve())
    return location.rstrip("/")


def _store(location: str) -> ShardStore:
    try:
        return ShardStore(location)
    except (ValueError, OSError) as err:
        raise ShardSetError(f"{location}: cannot open it as a shard set location ({_first_line(err)})") from err


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def shard_url(store: ShardStore, name: str) -> str:
    """The URL a reader opens for file ``name`` of ``store``: an absolute path, or the URI with its scheme."""
    if store.is_local:
        return store.path(name)
    return f"{store.location.split('://', 1)[0]}://{store.path(name)}"


def _listing(store: ShardStore, location: str) -> dict[str, int]:
    """Size in bytes of every file directly in the set's folder."""
    try:
        root = store.fs.get_file_info(store.root)
        if root.type == pafs.FileType.File:
            raise ShardSetError(f"{location} is a file, not a shard set folder")
        infos = store.fs.get_file_info(pafs.FileSelector(store.root, allow_not_found=True))
    except OSError as err:
        raise ShardSetError(f"{location}: cannot list it ({_first_line(err)})") from err
    files = {i.base_name: i.size for i in infos if i.type == pafs.FileType.File}
    if root.type == pafs.FileType.NotFound and not files:
        raise ShardSetError(f"{location} does not exist")
    return files


def _is_tvp_stats(stats: dict[str, Any]) -> bool:
    return "sha256" in stats and "shard" in stats


def _is_img2dataset_stats(stats: dict[str, Any]) -> bool:
    """The fields img2dataset's ``write_stats`` gives every shard (``count`` there means input rows)."""
    return isinstance(stats.get("successes"), int) and {"count", "failed_to_download", "failed_to_resize"} <= set(stats)


class ShardSet:
    """A shard set's manifest, complete shards and samples (see the module docstring)."""

    def __init__(self, location: str, manifest: dict[str, Any], refs: list[ShardRef],
                 index_location: str | None = None):
        self.location = location
        self.manifest = manifest
        self.refs = refs
        self.index_location = index_location  # where sizes.json/manifest.json are; None: in memory only

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    @property
    def num_samples(self) -> int:
        return sum(ref.num_samples for ref in self.refs)

    @property
    def incomplete_shards(self) -> list[str]:
        return list(self.manifest.get("incomplete_shards", []))

    def __repr__(self) -> str:
        return f"ShardSet({self.location!r}, {len(self.refs)} shards, {self.num_samples} samples)"

    @classmethod
    def open(cls, location: str | Path, index_dir: str | Path | None = None) -> "ShardSet":
        """The shard set at ``location``; a set without tvp's manifest is indexed (once) first."""
        found = cls.find(location, index_dir)
        return found if found is not None else cls.index(location, index_dir)

    @classmethod
    def find(cls, location: str | Path, index_dir: str | Path | None = None) -> "ShardSet | None":
        """The set as its manifest or an up-to-date index describes it; None when a foreign set needs indexing."""
        location = _normalized(location)
        store = _store(location)
        for index_store in _index_stores(location, store, index_dir):
            manifest = _read_json(index_store, "manifest.json", location)
            if manifest is None:
                continue
            if manifest.get("indexed_by") != "tvp":
                return cls(location, manifest, _refs(store, index_store, location), index_store.location)
            if _still_current(manifest, _listing(store, location)):
                return cls(location, manifest, _refs(store, index_store, location), index_store.location)
        return None

    @classmethod
    def index(cls, location: str | Path, index_dir: str | Path | None = None) -> "ShardSet":
        """Index a foreign set now (counts, hash), write the index where it can, and return the set."""
        location = _normalized(location)
        store = _store(location)
        beside = _read_json(store, "manifest.json", location)
        if isinstance(beside, dict) and beside.get("indexed_by") != "tvp":
            return cls(location, beside, _refs(store, store, location), store.location)  # tvp's own: no index
        files = _listing(store, location)
        previous = _previous_counts(location, store, index_dir)
        manifest, sizes = _build_index(location, store, files, previous)
        for index_store in _index_stores(location, store, index_dir):
            try:
                if index_store is not store:
                    index_store.makedirs()
                index_store.write_json("sizes.json", sizes)
                index_store.write_json("manifest.json", manifest)  # last: its presence means the index is whole
            except OSError as err:
                log.info("cannot write the index of %s into %s (%s)", location, index_store.location, _first_line(err))
                continue
            log.info("indexed %s: %d shards, %d samples (index in %s)", location, manifest["num_shards"],
                     manifest["num_samples"], index_store.location)
            return cls(location, manifest, _refs_from_sizes(store, sizes), index_store.location)
        log.warning("%s is not writable and %s: its index lives in memory only", location,
                    "neither is the index_dir" if index_dir is not None else "no index_dir was given")
        return cls(location, manifest, _refs_from_sizes(store, sizes), None)

    def iter_samples(self, members: Sequence[str] | None = None) -> Iterator[dict[str, bytes]]:
        """Every sample in shard order, members as raw bytes plus ``__key__``; only ``members`` when given."""
        for ref in self.refs:
            try:
                yield from iter_shard_samples(ref.url, members)
            except (tarfile.TarError, OSError) as err:
                raise ShardSetError(f"{self.location}: cannot read shard {ref.url} ({_first_line(err)})") from err


def _index_stores(location: str, store: ShardStore, index_dir: str | Path | None) -> list[ShardStore]:
    """Where the set's sizes.json/manifest.json may be: beside the shards, then under ``index_dir``."""
    stores = [store]
    if index_dir is not None:
        digest = hashlib.sha256(location.encode()).hexdigest()[:16]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", location.rstrip("/").rsplit("/", 1)[-1])[:40] or "root"
        stores.append(_store(f"{_normalized(index_dir)}/{name}-{digest}"))
    return stores


def _read_json(store: ShardStore, name: str, location: str, must_parse: bool = True) -> Any:
    try:
        if not store.exists(name):
            return None
        return store.read_json(name)
    except OSError as err:
        if not must_parse:
            return None
        raise ShardSetError(f"{location}: cannot read {store.path(name)} ({_first_line(err)})") from err
    except json.JSONDecodeError as err:
        if not must_parse:
            return None
        raise ShardSetError(f"{location}: {name} is not valid JSON ({err})") from err


def _refs_from_sizes(store: ShardStore, sizes: dict[str, int]) -> list[ShardRef]:
    return [ShardRef(shard_url(store, name), int(count)) for name, count in sorted(sizes.items())]


def _refs(store: ShardStore, index_store: ShardStore, location: str) -> list[ShardRef]:
    sizes = _read_json(index_store, "sizes.json", location)
    if sizes is None:
        raise ShardSetError(f"{location} is not a finished shard set: it has manifest.json but no sizes.json")
    return _refs_from_sizes(store, sizes)


def _complete_shards(files: dict[str, int], location: str) -> tuple[list[str], list[str], bool]:
    """(complete tars, incomplete tars, whether stats files decide completeness), names sorted."""
    tars = sorted(name for name in files if _TAR.match(name))
    if not tars:
        extra = "no manifest.json, no sizes.json and no NNNNN.tar shards in it"
        raise ShardSetError(f"{location} is not a shard set: {extra}")
    has_stats = any(name.endswith(_STATS_SUFFIX) for name in files)
    if not has_stats:
        return tars, [], False
    complete = [t for t in tars if f"{t[:-4]}{_STATS_SUFFIX}" in files]
    return complete, [t for t in tars if t not in complete], True


def _still_current(manifest: dict[str, Any], files: dict[str, int]) -> bool:
    try:
        complete, incomplete, _ = _complete_shards(files, "")
    except ShardSetError:
        return False
    recorded = manifest.get("shard_bytes", {})
    return ({name: files[name] for name in complete} == recorded
            and incomplete == manifest.get("incomplete_shards", []))


def _previous_counts(location: str, store: ShardStore, index_dir: str | Path | None) -> dict[tuple[str, int], int]:
    """(tar name, bytes) → count from an outdated index, so unchanged shards are not counted again."""
    for index_store in _index_stores(location, store, index_dir):
        manifest = _read_json(index_store, "manifest.json", location, must_parse=False)
        sizes = _read_json(index_store, "sizes.json", location, must_parse=False)
        if isinstance(manifest, dict) and manifest.get("indexed_by") == "tvp" and isinstance(sizes, dict):
            shard_bytes = manifest.get("shard_bytes", {})
            return {(name, shard_bytes[name]): count for name, count in sizes.items() if name in shard_bytes}
    return {}


def _count_samples(url: str, location: str) -> int:
    count = 0
    try:
        for _ in iter_shard_samples(url, members=()):
            count += 1
    except (tarfile.TarError, OSError) as err:
        raise ShardSetError(f"{location}: {url.rsplit('/', 1)[-1]} is not a readable tar ({_first_line(err)})") from err
    return count


def _build_index(location: str, store: ShardStore, files: dict[str, int],
                 previous: dict[tuple[str, int], int]) -> tuple[dict[str, Any], dict[str, int]]:
    """The manifest and sizes.json of a foreign set (see the module docstring for the rules)."""
    complete, incomplete, has_stats = _complete_shards(files, location)
    if incomplete:
        log.warning("%s: %d shards have no _stats.json and are left out as incomplete: %s", location,
                     len(incomplete), ", ".join(incomplete[:5]) + (" …" if len(incomplete) > 5 else ""))
    with ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
        with_stats = complete if has_stats else []
        stats = dict(zip(with_stats, pool.map(
            lambda tar: _read_json(store, f"{tar[:-4]}{_STATS_SUFFIX}", location), with_stats)))
    if any(isinstance(s, dict) and _is_tvp_stats(s) for s in stats.values()):
        raise ShardSetError(f"{location} is an unfinished tvp shard set (it has no manifest.json): "
                            "rerun its ingestion to finish it")
    counts: dict[str, int] = {}
    counted_from = {"previous_index": 0, "stats": 0, "streaming": 0}
    to_stream: list[str] = []
    for tar in complete:
        shard_stats = stats.get(tar)
        if (tar, files[tar]) in previous:
            counts[tar] = previous[(tar, files[tar])]
            counted_from["previous_index"] += 1
        elif isinstance(shard_stats, dict) and _is_img2dataset_stats(shard_stats):
            counts[tar] = shard_stats["successes"]
            counted_from["stats"] += 1
        else:
            to_stream.append(tar)
    counted_from["streaming"] = len(to_stream)
    with ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
        streamed = pool.map(lambda tar: _count_samples(shard_url(store, tar), location), to_stream)
        counts.update(zip(to_stream, streamed))
    sizes = {tar: counts[tar] for tar in complete}
    content = hashlib.sha256()
    for tar in complete:
        content.update(f"{tar}:{files[tar]}:{sizes[tar]}\n".encode())
    img2dataset = [s for s in stats.values() if isinstance(s, dict) and _is_img2dataset_stats(s)]
    errors: dict[str, int] = {}
    for s in img2dataset:
        for category in ("failed_to_download", "failed_to_resize"):
            errors[category] = errors.get(category, 0) + int(s.get(category, 0))
    manifest = {
        "format_version": 1,
        "indexed_by": "tvp",
        "index_version": INDEX_VERSION,
        "indexed_location": location,
        "source_layout": "img2dataset" if img2dataset and len(img2dataset) == len(complete) else "webdataset",
        "source": {"location": location},
        "config": {},
        "num_shards": len(complete),
        "num_samples": sum(sizes.values()),
        "num_input_rows": (sum(int(s["count"]) for s in img2dataset) if len(img2dataset) == len(complete)
                           else sum(sizes.values())),
        "errors": {k: v for k, v in errors.items() if v},
        "counted_from": counted_from,
        "shard_bytes": {tar: files[tar] for tar in complete},
        "incomplete_shards": incomplete,
        "content_hash": content.hexdigest(),
        "content_hash_rule": HASH_RULE,
    }
    return manifest, sizes

