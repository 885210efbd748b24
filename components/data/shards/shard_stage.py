"""The one shard stage: a stream of input rows → a complete shard set, with one Ray task per shard.

A source hands it an ``InputReader`` and a ``ShardBuilder`` (their data
contract is in ``shard_source.py``) and the ``config`` that shapes its samples.

The stage itself:

1. Fingerprint: a hash of the reader's description and the ``config`` (what
   shapes the samples, ``rows_per_shard`` added). Every shard's stats carry
   it; a folder holding shards with another fingerprint is refused.
2. Plan: the reader is streamed once and cut into shards of
   ``rows_per_shard`` rows; each missing shard's rows go to ``_inputs/`` (the
   driver holds about one shard, however large the input). Files an
   interrupted run left half-written are removed first.
3. Shards: one Ray task per missing shard, ``processes`` at a time. A shard
   is complete when its ``NNNNN_stats.json`` exists, and is never redone.
4. ``after_shards(store)`` (for image-text: dedup), once every shard is complete.
5. ``sizes.json`` and ``manifest.json`` (with the content hash); ``_inputs/`` is removed.

Shard boundaries and keys depend on the input alone, so a rerun after a crash
gives exactly the set an uninterrupted run gives.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow.parquet as pq
import ray

from components.data.shards.output_lease import OutputLease
from components.data.shards.shard_reader import ShardSetError
from components.data.shards.shard_source import InputReader, ShardBuilder, cut_shards
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import (
    completed_shards, finalize_shard_set, remove_partial_files, shard_name, unfinished_shard_files, write_shard,
)

INPUTS = "_inputs"
LOCK_FILE = ".tvp.lock"
ShardDone = Callable[[dict[str, Any], int, int], None]  # (the shard's stats, shards complete, shards in all)
Planned = Callable[[int, int, int], None]  # (shards in all, shards to do, input rows)


def config_fingerprint(source: dict[str, Any], config: dict[str, Any]) -> str:
    """What a shard was made from, in 16 hex digits: equal exactly when source and config are."""
    return hashlib.sha256(json.dumps([source, config], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _refuse_foreign(store: ShardStore, done: dict[int, dict[str, Any]], fingerprint: str, input_name: str) -> None:
    foreign = sorted(i for i, s in done.items() if s.get("config_fingerprint") != fingerprint)
    if foreign:
        raise ShardSetError(f"{store.location} holds shards made from another {input_name} or config "
                            f"(shard {shard_name(foreign[0])}); use an empty output folder or the same arguments")


def fingerprinted_folder(store: ShardStore, folder: str, fingerprint: str) -> None:
    """Make ``folder`` a scratch folder of work that a resumed run may reuse only when it was made from the same
    things (``fingerprint``): emptied when its ``FINGERPRINT`` differs or is missing, then marked."""
    marker = f"{folder}/FINGERPRINT"
    if store.exists(folder) and (not store.exists(marker) or store.read_bytes(marker).decode() != fingerprint):
        store.delete_folder(folder)
    store.makedirs(folder)
    store.write_bytes(marker, fingerprint.encode())


def _planned_ids(store: ShardStore, fingerprint: str) -> set[int]:
    """Shards an earlier run planned from these same inputs and config (so any file of theirs is tvp's)."""
    marker = f"{INPUTS}/FINGERPRINT"
    if not store.exists(marker) or store.read_bytes(marker).decode() != fingerprint:
        return set()
    return {int(name.split(".")[0]) for name in store.names(INPUTS) if name.endswith(".parquet")}


def _refuse_files_not_ours(store: ShardStore, location: str) -> None:
    """A file named like a shard that tvp did not make here (an input table ``00000.parquet``, say) would be
    overwritten: refuse rather than lose it."""
    foreign = sorted(unfinished_shard_files(store))
    if foreign:
        raise ShardSetError(f"{location} holds {foreign[0]}, which this ingestion did not make: "
                            "move it away or write to another folder")


class _FolderLock:
    """What ``output_lock`` holds on a local folder: the OS keeps the lock until the process ends, so it cannot
    be lost and there is nothing to check."""

    def check(self) -> None:
        pass


@contextmanager
def output_lock(store: ShardStore, location: str) -> Iterator[_FolderLock | OutputLease]:
    """One run at a time per output folder; a second run is refused with ``ShardSetError``, and a SIGKILLed
    run never blocks its resume.

    A local folder: ``flock`` on ``.tvp.lock``, which the OS drops when the process dies. Object storage: the
    lease object ``.tvp.lease`` (``output_lease.py``), renewed while the run lives and taken over once it has
    expired (60 s after a killed run's last renewal). Call ``check()`` on what this yields before declaring
    the set finished: it raises ``ShardSetError`` when the lease was lost to another run.
    """
    if not store.is_local:
        with OutputLease(store, location) as lease:
            yield lease
        return
    with open(store.path(LOCK_FILE), "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ShardSetError(f"another run is writing {location} right now: wait for it, or write elsewhere") from None
        try:
            yield _FolderLock()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def plan_shards(reader: InputReader, store: ShardStore, rows_per_shard: int,
                done: set[int]) -> tuple[list[dict[str, int]], int, int]:
    """Save each missing shard's rows; return (pending shards, number of shards, number of input rows)."""
    pending, shards, total = [], 0, 0
    batches = reader.read(min(rows_per_shard, 65_536))
    for shard_id, first_row, rows in cut_shards(batches, rows_per_shard):
        shards, total = shards + 1, total + rows.num_rows
        if shard_id in done:
            continue
        name = f"{INPUTS}/{shard_name(shard_id)}.parquet"
        if not store.exists(name):
            with store.open_write(name) as f:
                pq.write_table(rows, f)
        pending.append({"shard_id": shard_id, "first_row": first_row})
    return pending, shards, total


def write_planned_shard(store: ShardStore, shard_id: int, first_row: int, build: ShardBuilder,
                        lineage: dict[str, Any]) -> dict[str, Any]:
    """Build shard ``shard_id`` from its planned rows and write it; return its stats (``lineage`` added)."""
    rows = pq.read_table(io.BytesIO(store.read_bytes(f"{INPUTS}/{shard_name(shard_id)}.parquet")))
    content = build(rows, first_row)
    return write_shard(store, shard_id, content.samples, lambda: {**content.stats(), **lineage}, rows=content.rows)


def _shard_task(item: dict[str, int], location: str, build: ShardBuilder, fingerprint: str) -> dict[str, Any]:
    lineage = {"config_fingerprint": fingerprint, "node_id": ray.get_runtime_context().get_node_id()}
    return write_planned_shard(ShardStore(location), item["shard_id"], item["first_row"], build, lineage)


def _run_tasks(pending: list[dict[str, int]], store: ShardStore, build: ShardBuilder, fingerprint: str,
               processes: int | None) -> Iterator[dict[str, Any]]:
    """Stats of each pending shard as its Ray task completes, at most ``processes`` tasks at a time.

    Plain Ray tasks, not a Ray Data pipeline: a shard is one independent task with a small result, and Ray
    Data's executor, stats and autoscaling actors cost seconds of start-up and CPU beside the work
    (``benchmarks/README.md``, ingestion start-up).
    """
    processes = max(1, processes or int(ray.cluster_resources().get("CPU", 1)))
    task = ray.remote(_shard_task).options(num_cpus=1, max_retries=3)
    build_ref = ray.put(build)  # shipped once, not with every task
    waiting = list(reversed(pending))
    running: list[ray.ObjectRef] = []
    try:
        while waiting or running:
            while waiting and len(running) < processes:
                running.append(task.remote(waiting.pop(), store.location, build_ref, fingerprint))
            finished, running = ray.wait(running, num_returns=1)
            yield ray.get(finished[0])
    finally:
        for ref in running:  # an error or an interrupt: stop the shards still running
            ray.cancel(ref, force=True)


def build_shard_set(
    reader: InputReader,
    build: ShardBuilder,
    out_dir: str | Path,
    config: dict[str, Any],
    rows_per_shard: int,
    processes: int | None = None,
    after_shards: Callable[[ShardStore], Any] | None = None,
    on_planned: Planned | None = None,
    on_shard_done: ShardDone | None = None,
    manifest_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the missing shards of ``reader``'s input into ``out_dir`` (a folder or ``s3://…``); return the manifest.

    ``config`` is JSON of every setting that changes the samples (not the
    ones that change only speed), including whether ``after_shards`` runs;
    ``after_shards`` must be idempotent, since a resumed run repeats it.
    ``on_planned(shards, pending, rows)`` is
    called once the input is cut, ``on_shard_done(stats, done, total)`` as
    each shard completes. ``manifest_extra`` is added to the manifest (a
    classification set's ``classes``). A folder holding shards made from other
    inputs or another config is refused with ``ShardSetError``.
    """
    store = ShardStore(out_dir)
    source = reader.describe()  # clear errors on bad inputs before anything is written
    config = {**config, "rows_per_shard": rows_per_shard}
    fingerprint = config_fingerprint(source, config)
    created = not store.exists()
    store.makedirs()
    with output_lock(store, str(out_dir)) as lock:
        done = completed_shards(store)
        _refuse_foreign(store, done, fingerprint, reader.input_name)
        # Unfinished shard files are this run's own when it planned them, or when the folder already is a set of
        # these inputs and config (its finished shards say so); anything else named like a shard is refused.
        remove_partial_files(store, None if done else _planned_ids(store, fingerprint))
        _refuse_files_not_ours(store, str(out_dir))
        fingerprinted_folder(store, INPUTS, fingerprint)  # planned inputs: reused only for the same inputs and config
        try:
            pending, num_shards, num_rows = plan_shards(reader, store, rows_per_shard, set(done))
        except Exception:  # inputs that turn out malformed halfway: leave nothing behind that was not there
            if not done:
                store.delete_folder(INPUTS)
                if created:
                    store.fs.delete_dir(store.root)
            raise
        if on_planned:
            on_planned(num_shards, len(pending), num_rows)
        if pending:
            for finished, stats in enumerate(_run_tasks(pending, store, build, fingerprint, processes), len(done) + 1):
                if on_shard_done:
                    on_shard_done(stats, finished, num_shards)
        if after_shards:
            after_shards(store)
        lock.check()  # a run that lost its folder to another must not declare the set finished
        manifest = finalize_shard_set(store, source, config, manifest_extra)
        store.delete_folder(INPUTS)
        return manifest
