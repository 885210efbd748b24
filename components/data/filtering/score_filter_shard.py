"""What the shard stage is handed to write a CLIP-score-filtered set: a reader and a builder. No Ray here.

The scoring pass (``clip_score_stage.py``) leaves one score table per input
shard: ``key``, ``score`` (float32, NaN when unscored) and ``reason``. Then:

- ``ScoredShardsReader`` yields one row per input shard, in the set's order:
  its URL and its keys, scores and reasons as lists. The stage cuts them one
  per output shard (``rows_per_shard`` 1), so output shard ``i`` is input
  shard ``i`` filtered, and the rows it is built from (saved in ``_inputs/``)
  carry its scores.
- ``ScoreFilterBuilder`` streams the input shard and keeps each sample whose
  score is at or above the threshold, under its own key, every member as it
  was, the score added to its ``.json`` under ``clip_score`` (a ``.json`` is
  made for a sample that had none). Its status table lists every input sample
  with its score and status (``kept``, ``below_threshold``, or the reason it
  was not scored); the stats count them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import pyarrow as pa

from components.data.filtering.clip_score import MISSING_MEMBER, SCORE_FIELD, sample_metadata
from components.data.shards.shard_source import ShardContent
from components.data.shards.tar_samples import KEY, iter_shard_samples

KEPT, BELOW_THRESHOLD = "kept", "below_threshold"
SCORE_SCHEMA = pa.schema([("key", pa.string()), ("score", pa.float32()), ("reason", pa.string())])


def score_table(keys: list[str], scores: np.ndarray, reasons: list[str]) -> pa.Table:
    """One input shard's scores, in its sample order."""
    return pa.table({"key": keys, "score": np.asarray(scores, dtype=np.float32), "reason": reasons},
                    schema=SCORE_SCHEMA)


@dataclass(frozen=True)
class ScoredShardsReader:
    """The stage's ``InputReader``: the input shards with their scores.

    ``describe()`` (the new set's ``source``) is the input set and the scoring model, not where the scores
    lie, so a resumed run has the same fingerprint. ``load_scores(i)`` returns shard ``i``'s score table.
    """

    source: dict[str, Any]
    shard_urls: tuple[str, ...]
    load_scores: Callable[[int], pa.Table] = field(compare=False)
    input_name: ClassVar[str] = "shard set or model"

    def describe(self) -> dict[str, Any]:
        return self.source

    def read(self, batch_rows: int) -> Iterator[pa.Table]:
        for i, url in enumerate(self.shard_urls):
            scores = self.load_scores(i)
            yield pa.table({
                "shard_url": [url],
                "keys": [scores.column("key").to_pylist()],
                "scores": pa.array([scores.column("score").to_pylist()], pa.list_(pa.float32())),
                "reasons": [scores.column("reason").to_pylist()],
            })


@dataclass(frozen=True)
class ScoreFilterBuilder:
    """The stage's ``ShardBuilder``: one input shard (its row from ``ScoredShardsReader``) → its kept samples.

    ``threshold`` is compared with each score as stored (float32, widened to float64), the same numbers
    the threshold of ``--keep-fraction`` was taken from.
    """

    threshold: float
    request: str = ""  # the filter's digest (input, model, rule), kept in each shard's stats

    def __call__(self, rows: pa.Table, first_row: int) -> ShardContent:
        (row,) = rows.to_pylist()
        scored = {key: (score, reason) for key, score, reason in zip(row["keys"], row["scores"], row["reasons"])}
        status: dict[str, list[Any]] = {"key": [], "score": [], "status": []}
        counts: dict[str, int] = {}

        def samples() -> Iterator[dict[str, Any]]:
            for sample in iter_shard_samples(row["shard_url"]):
                key = sample[KEY]
                score, reason = scored.get(key, (None, MISSING_MEMBER))
                kept = score is not None and not np.isnan(score) and score >= self.threshold
                outcome = KEPT if kept else (reason or BELOW_THRESHOLD)
                status["key"].append(key)
                status["score"].append(None if score is None or np.isnan(score) else score)
                status["status"].append(outcome)
                counts[outcome] = counts.get(outcome, 0) + 1
                if kept:
                    yield {**sample, "json": {**sample_metadata(sample.get("json")), SCORE_FIELD: float(score)}}

        def stats() -> dict[str, Any]:
            scored_pairs = sum(n for outcome, n in counts.items() if outcome in (KEPT, BELOW_THRESHOLD))
            return {"input_rows": len(status["key"]), "successes": counts.get(KEPT, 0), "scored": scored_pairs,
                    "threshold": self.threshold, "request": self.request,
                    "source_shard": row["shard_url"].rsplit("/", 1)[-1],
                    "errors": {k: v for k, v in sorted(counts.items()) if k != KEPT}}

        def table() -> pa.Table:
            return pa.table({"key": status["key"], "score": pa.array(status["score"], pa.float32()),
                             "status": status["status"]})

        return ShardContent(samples(), stats, table)
