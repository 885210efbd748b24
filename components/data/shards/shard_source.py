"""What a source hands the shard stage (``shard_stage.build_shard_set``): a reader and a builder. No Ray here.

Every ingester (image-text URL tables, Wikipedia dumps, image folders, COCO)
is these two things and nothing Ray-specific; planning, resume, Ray tasks and
the manifest are the stage's.

``InputReader`` — where the rows come from.
    ``describe()`` returns what the set is made from, as JSON (files, their
    sizes, the columns used); it is part of the set's fingerprint and becomes
    the manifest's ``source``. It is called first, so it is the place to fail
    with a clear message on missing or malformed inputs. ``read(batch_rows)``
    yields every input row exactly once, in the same order on every call, as
    ``pyarrow.Table`` batches of at most ``batch_rows`` rows (smaller or empty
    batches are fine). Batches share their column names (types may widen, as
    in pyarrow's permissive concatenation) and hold values Parquet can store:
    each shard's rows are saved to ``_inputs/NNNNN.parquet`` before its task
    runs. ``input_name`` names the inputs in messages ("table", "dump").

``ShardBuilder`` — what one shard is made of.
    A picklable callable ``build(rows, first_row) -> ShardContent``. ``rows``
    is the shard's input rows (a ``pyarrow.Table`` with the reader's columns),
    ``first_row`` the position of its first row in the whole input: sample
    keys derive from it, so they depend on the input alone. The builder writes
    nothing; it returns a ``ShardContent``. It runs once per shard in a Ray
    task and may read what its rows point at (image files, URLs), but its
    output must be a function of its arguments, or a resumed run would differ
    from an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Protocol

import pyarrow as pa


class InputReader(Protocol):
    input_name: ClassVar[str]

    def describe(self) -> dict[str, Any]: ...

    def read(self, batch_rows: int) -> Iterable[pa.Table]: ...


@dataclass
class ShardContent:
    """One shard as a builder makes it; the stage writes it with ``write_shard`` (tar, rows, then stats).

    ``samples`` are webdataset sample dicts in key order: a dot-free ``__key__``
    and one entry per member extension (``jpg`` bytes, ``txt`` str, ``json``
    dict, ...); they may be a generator that is still producing. ``stats`` is
    called once every sample is consumed and returns JSON: ``input_rows`` (int)
    and ``errors`` ({category: count}) are summed into the manifest, anything
    else is kept in ``NNNNN_stats.json``; the stage adds ``count``, ``bytes``,
    ``sha256``, ``shard``, ``config_fingerprint`` and ``node_id``. ``rows``, if
    given, returns one status row per input row, written as ``NNNNN.parquet``.
    """

    samples: Iterable[dict[str, Any]]
    stats: Callable[[], dict[str, Any]]
    rows: Callable[[], pa.Table] | None = None


class ShardBuilder(Protocol):
    def __call__(self, rows: pa.Table, first_row: int) -> ShardContent: ...


def cut_shards(batches: Iterable[pa.Table], rows_per_shard: int) -> Iterator[tuple[int, int, pa.Table]]:
    """(shard id, first row, rows) with exactly ``rows_per_shard`` rows each but the last; none empty.

    Shards are cut across batch boundaries; about one shard of rows is held at a time.
    """
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be positive")
    pending: list[pa.Table] = []
    held, shard_id = 0, 0
    for batch in batches:
        if not batch.num_rows:
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= rows_per_shard:
            rows = _concat(pending)
            yield shard_id, shard_id * rows_per_shard, rows.slice(0, rows_per_shard)
            pending, held, shard_id = [rows.slice(rows_per_shard)], held - rows_per_shard, shard_id + 1
    if held:
        yield shard_id, shard_id * rows_per_shard, _concat(pending)


def _concat(tables: list[pa.Table]) -> pa.Table:
    # Files of one input may differ slightly (a column all null in one, typed in another).
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
