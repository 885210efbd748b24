"""``tvp select-shards``: the shard sets under a data root that a lineage of runs has not trained on yet.

Continued pretraining runs on what arrived since its last run. Every
training run records the content hashes of the shard sets it trained on
(``data_manifest_hash``) and, when given ``--lineage NAME``, the tag
``tvp.lineage``. The sets to train on next are the finished sets directly
under the data root whose content hash no finished run of the lineage
recorded: a set that was rewritten (new content, new hash) counts as new,
and one a failed run read does not count as trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from components.data.shards.shard_set import ShardSet
from components.data.shards.shard_store import ShardStore

LINEAGE_TAG = "tvp.lineage"


@dataclass
class Selection:
    new: list[tuple[str, str]]  # (location, content hash), in name order
    trained: int  # sets under the root the lineage trained on already
    unfinished: list[str]  # folders without a manifest or index (still being written, or never indexed)


def trained_hashes(tracking_uri: str, lineage: str) -> set[str]:
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return set()
    runs = client.search_runs(experiments, f"tags.`{LINEAGE_TAG}` = '{lineage}' and attributes.status = 'FINISHED'")
    return {h for run in runs for h in run.data.tags.get("data_manifest_hash", "").split(",") if h}


def select_new_shard_sets(root: str, lineage: str, tracking_uri: str, index_dir: str | None = None) -> Selection:
    done = trained_hashes(tracking_uri, lineage)
    store = ShardStore(root)
    new, trained, unfinished = [], 0, []
    for name in store.folders():
        location = f"{root.rstrip('/')}/{name}"
        found = ShardSet.find(location, index_dir)  # tvp's sets, and others' once indexed (tvp inspect --index)
        if found is None:
            unfinished.append(location)
        elif found.content_hash in done:
            trained += 1
        else:
            new.append((location, found.content_hash))
    return Selection(new, trained, unfinished)
