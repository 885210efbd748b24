"""``tvp evaluate`` and ``tvp promote``: measure a registered version on a shard set, and move ``champion``."""

from __future__ import annotations

import tempfile

from mlflow.tracking import MlflowClient

from components.data.shards.shard_reader import iter_samples, read_manifest
from components.tracking.promotion import Mode, promote, record_evaluation
from components.tracking.registry import download_registered_checkpoint, resolve_model_version
from components.tasks.registry import load_task_and_model


def evaluate_registered(model_uri: str, shard_dir: str, tracking_uri: str) -> dict[str, float]:
    """Evaluate the version behind ``model_uri`` with its task's own evaluation; record the metrics on it."""
    data_hash = read_manifest(shard_dir)["content_hash"]  # fails clearly on an unfinished shard set
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    version = resolve_model_version(client, model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = download_registered_checkpoint(f"models:/{version.name}/{version.version}", tmp, tracking_uri)
        task, model = load_task_and_model(checkpoint)
        metrics = task.evaluate(model, iter_samples(shard_dir))
    record_evaluation(client, version.name, version.version, metrics, data_hash)
    return metrics


def promote_registered(model_uri: str, metric: str, mode: Mode, alias: str, tracking_uri: str) -> tuple[bool, str]:
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    return promote(client, resolve_model_version(client, model_uri), metric, mode, alias)
