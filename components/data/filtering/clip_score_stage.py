"""CLIP-score filtering: score every image-text pair in a pool of Ray Data actors, keep those at or above a
threshold, and write them as a new shard set through the one shard stage.

``filter_shard_set(shard_set, model, out_dir, rule)`` runs:

1. Checks, before anything is written: the output is not the input, and
   holds no shards filtered from another set, model or rule.
2. Scoring: a Ray Data pipeline reads the input shards (``.jpg``, ``.txt``,
   ``.json``) and ``map_batches`` them through an actor pool; each actor
   loads the checkpoint once (its files travel as bytes, so actors may run on
   any node) and scores batches with ``ClipScorer`` (CPU, or
   ``gpus_per_actor`` of an accelerator). The driver gathers ``(key, score)``
   per shard and writes ``_scores/NNNNN.parquet`` as soon as a shard's samples
   are all scored; a rerun scores only the shards without one. Every pair is
   scored exactly once, whichever the rule.
3. Threshold: ``--min-score`` as given; ``--keep-fraction F`` the (1 - F)
   quantile of the stored scores (``keep_threshold``: ties kept).
4. Writing: ``build_shard_set`` with ``ScoredShardsReader`` and
   ``ScoreFilterBuilder`` (``score_filter_shard.py``): output shard ``i`` holds
   the kept samples of input shard ``i`` under their own keys, so lineage back
   to the source rows holds. Resume, the output lock, temporary names and the
   manifest are the stage's. ``manifest.json`` gains ``clip_score``: the
   threshold, the rule, scored/kept counts and the kept fraction (kept /
   scored), the input set's location and content hash, the model's URI, name
   and version; the input's ``classes`` are carried over.
5. ``_scores/`` is removed once the manifest is written. A rerun of a finished
   filter with the same input, model and rule returns its manifest.

The output lock is held while scoring and again (by the shard stage) while
writing; between the two a second run could take the folder, and then this
one is refused instead of writing beside it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from components.data.filtering.clip_score import (
    COLUMNS, SCORE_DEFINITION, SCORE_FIELD, ClipScoreError, ClipScorer, DeviceModel, ScoreRule,
)
from components.data.filtering.score_filter_shard import (
    SCORE_SCHEMA, ScoredShardsReader, ScoreFilterBuilder, score_table,
)
from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_set import ShardSet
from components.data.shards.shard_stage import Planned, ShardDone, build_shard_set, fingerprinted_folder, output_lock
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import completed_shards, shard_name

SCORES = "_scores"
DEFAULT_BATCH_SIZE = 256
Scored = Callable[[int, int, int], None]  # (shards scored, shards to score, pairs scored so far)


@dataclass(frozen=True)
class ScoringModel:
    """The registered CLIP that scores: where it came from, and its checkpoint files as bytes."""

    uri: str  # as the user gave it: models:/NAME@ALIAS or models:/NAME/VERSION
    name: str
    version: str
    run_id: str
    files: dict[str, bytes] = field(repr=False, compare=False)

    @property
    def digest(self) -> str:
        """sha256 of the checkpoint's files, so scores from another store's same-named version are not reused."""
        h = hashlib.sha256()
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return h.hexdigest()

    def identity(self) -> dict[str, str]:
        """What the scores depend on: the resolved version and its files, not how the URI spelled it."""
        return {"name": self.name, "version": self.version, "run_id": self.run_id, "checkpoint_sha256": self.digest}

    def describe(self) -> dict[str, str]:
        return {"uri": self.uri, **self.identity()}


class ScoreActor:
    """Holds one copy of the model; turns batches of raw members into scores (``ClipScorer.score_batch``)."""

    def __init__(self, model_files: dict[str, bytes], device: str = "cpu"):
        import torch

        from components.tasks.registry import load_task_and_model

        self._dir = tempfile.TemporaryDirectory()  # the files travel as bytes: actors may run on other nodes
        for name, data in model_files.items():
            (Path(self._dir.name) / name).write_bytes(data)
        if device == "cpu":
            torch.set_num_threads(1)  # one CPU per actor
        task, model = load_task_and_model(self._dir.name)
        self.scorer = ClipScorer(task, model if device == "cpu" else DeviceModel(model, torch.device(device)))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        scored = self.scorer.score_batch({c: batch[c] for c in COLUMNS if c in batch})
        return {"__url__": batch["__url__"], "__key__": batch["__key__"], **scored}


def _score_name(i: int) -> str:
    return f"{SCORES}/{shard_name(i)}.parquet"


def score_missing_shards(shard_set: ShardSet, model: ScoringModel, store: ShardStore, actors: int | None = None,
                         batch_size: int = DEFAULT_BATCH_SIZE, gpus_per_actor: float = 0.0,
                         on_scored: Scored | None = None) -> None:
    """Write ``_scores/NNNNN.parquet`` for every input shard that has none, through a Ray Data actor pool."""
    import ray
    import ray.data

    refs = shard_set.refs
    pending = [i for i in range(len(refs)) if not store.exists(_score_name(i))]
    if on_scored:
        on_scored(0, len(pending), 0)
    if not pending:
        return
    position = {refs[i].url.rsplit("/", 1)[-1]: i for i in pending}
    size = actors or max(1, min(len(pending), int(ray.cluster_resources().get("CPU", 1)) // 2))
    dataset = ray.data.read_webdataset([refs[i].url for i in pending], decoder=None, suffixes=list(COLUMNS),
                                       override_num_blocks=len(pending))
    scored = dataset.map_batches(
        ScoreActor, fn_constructor_kwargs={"model_files": model.files,
                                           "device": "cuda" if gpus_per_actor else "cpu"},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=size),
        num_cpus=1, num_gpus=gpus_per_actor or None)
    parts: dict[int, list[tuple[str, float, str]]] = {i: [] for i in pending}
    done = pairs = 0

    def write(i: int) -> None:
        nonlocal done
        rows = parts.pop(i)
        table = score_table([r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.float32),
                            [r[2] for r in rows])
        with store.open_write(_score_name(i)) as f:
            pq.write_table(table, f)
        done += 1
        if on_scored:
            on_scored(done, len(pending), pairs)

    for batch in scored.iter_batches(batch_format="numpy", batch_size=None):
        touched = set()
        for url, key, score, reason in zip(batch["__url__"], batch["__key__"], batch["score"], batch["reason"]):
            i = position[str(url).rsplit("/", 1)[-1]]
            parts[i].append((str(key), float(score), str(reason)))
            touched.add(i)
        pairs += len(batch["__key__"])
        for i in sorted(touched):
            if len(parts[i]) >= refs[i].num_samples:
                write(i)
    for i in sorted(parts):  # the pass is over: what is left is complete (an empty shard, or counts that differ)
        write(i)


def _load_scores(store: ShardStore, i: int, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(store.read_bytes(_score_name(i))), schema=SCORE_SCHEMA, columns=columns)


def _request_digest(source: dict[str, Any], rule: ScoreRule) -> str:
    return hashlib.sha256(json.dumps([source, rule.describe()], sort_keys=True).encode()).hexdigest()[:16]


def _refuse_other_filters(store: ShardStore, location: str, request: str) -> dict[str, Any] | None:
    """The finished manifest of this same filter, if the output already is one; refuse any other shards there."""
    if not store.exists():
        return None
    manifest = store.read_json("manifest.json") if store.exists("manifest.json") else None
    if manifest is not None and manifest.get("clip_score", {}).get("request") == request:
        return manifest
    foreign = sorted(i for i, s in completed_shards(store).items() if s.get("request") != request)
    if manifest is not None or foreign:
        raise ShardSetError(f"{location} holds a shard set made from another input, model or rule: use an empty "
                            "output folder or the same arguments")
    return None


def _location(out_dir: str | Path) -> str:
    """The output as ``ShardSet`` names locations: an absolute path, or the URI without a trailing slash."""
    location = str(out_dir)
    if "://" not in location or location.startswith("file://"):
        return str(Path(location.removeprefix("file://")).resolve())
    return location.rstrip("/")


def _read_scores(store: ShardStore, shard_set: ShardSet, created: bool) -> tuple[np.ndarray, dict[str, int]]:
    """Every stored score (float32, NaN: unscored) and the unscored pairs by reason; ``ClipScoreError``, after
    removing what this run made, when no pair could be scored."""
    tables = [_load_scores(store, i, ["score", "reason"]) for i in range(len(shard_set.refs))]
    scores = np.concatenate([t.column("score").to_numpy(zero_copy_only=False) for t in tables]).astype(np.float32)
    if not np.isfinite(scores).any():
        store.delete_folder(SCORES)
        if created:
            store.fs.delete_dir(store.root)
        raise ClipScoreError(f"none of the {len(scores)} samples of {shard_set.location} could be scored "
                             "(each needs a decodable .jpg and a UTF-8 .txt)")
    unscored: dict[str, int] = {}
    for reason in (r for t in tables for r in t.column("reason").to_pylist() if r):
        unscored[reason] = unscored.get(reason, 0) + 1
    return scores, unscored


def filter_shard_set(
    shard_set: ShardSet,
    model: ScoringModel,
    out_dir: str | Path,
    rule: ScoreRule,
    actors: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    gpus_per_actor: float = 0.0,
    on_scored: Scored | None = None,
    on_threshold: Callable[[float, int, int], None] | None = None,
    on_planned: Planned | None = None,
    on_shard_done: ShardDone | None = None,
    processes: int | None = None,
) -> dict[str, Any]:
    """Write the pairs of ``shard_set`` that ``rule`` keeps into ``out_dir``, resuming; return the manifest.

    ``on_threshold(threshold, kept, scored)`` is called once the threshold is known; ``processes`` shards
    are written at once (default: the cluster's CPUs). ``ShardSetError`` for an
    output that holds another set or is the input; ``ClipScoreError`` when no pair could be scored.
    """
    location = _location(out_dir)
    if location == shard_set.location:
        raise ShardSetError(f"--output {out_dir} is the input set itself: write the filtered set elsewhere")
    source = {"input": {"location": shard_set.location, "content_hash": shard_set.content_hash},
              "model": model.identity(), "score": SCORE_DEFINITION}
    request = _request_digest(source, rule)
    store = ShardStore(out_dir)
    finished = _refuse_other_filters(store, location, request)
    if finished is not None:
        store.delete_folder(SCORES)
        return finished
    created = not store.exists()
    store.makedirs()
    with output_lock(store, location):
        # Scores are reused only when made from the same input set and checkpoint.
        fingerprinted_folder(store, SCORES, json.dumps([source["input"], model.digest], sort_keys=True))
        score_missing_shards(shard_set, model, store, actors, batch_size, gpus_per_actor, on_scored)
    scores, unscored = _read_scores(store, shard_set, created)
    threshold = rule.threshold(scores)
    scored = int(np.isfinite(scores).sum())
    kept = int((scores.astype(np.float64) >= threshold).sum())  # NaN compares false
    if on_threshold:
        on_threshold(threshold, kept, scored)
    summary = {
        "score": SCORE_DEFINITION, "field": SCORE_FIELD, "request": request, **rule.describe(),
        "threshold": threshold, "scored": scored, "kept": kept, "kept_fraction": kept / scored,
        "unscored": unscored, "model": model.describe(),
        "input": {**source["input"], "num_samples": shard_set.num_samples, "num_shards": len(shard_set.refs)},
    }
    extra: dict[str, Any] = {"clip_score": summary}
    if shard_set.manifest.get("classes"):
        extra["classes"] = shard_set.manifest["classes"]
    reader = ScoredShardsReader(source, tuple(ref.url for ref in shard_set.refs), lambda i: _load_scores(store, i))
    manifest = build_shard_set(reader, ScoreFilterBuilder(threshold, request), out_dir,
                               {"rule": rule.describe(), "threshold": threshold}, rows_per_shard=1,
                               processes=processes, on_planned=on_planned, on_shard_done=on_shard_done,
                               manifest_extra=extra)
    store.delete_folder(SCORES)
    return manifest
