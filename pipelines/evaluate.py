"""``tvp evaluate`` and ``tvp promote``: measure a registered version on a shard set, and move ``champion``.

Evaluation runs the task's own per-batch step (the one the training workers
run) in a pool of Ray Data actors that each hold the model, so it scales past
one process; the driver gathers the per-sample outputs and applies the task's
reduction.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from components.data.shards.shard_set import ShardSet, work_index_dir
from components.evaluation.batch_evaluation import concat_outputs
from components.evaluation.eval_facts import eval_facts
from components.tasks.registry import load_task_and_model
from components.tasks.task import EvalFacts
from components.tracking.promotion import Mode, promote, record_evaluation
from components.tracking.registry import download_registered_checkpoint, resolve_model_version
from components.training.checkpoint import read_checkpoint_config

EVAL_BATCH_SIZE = 128


class EvalActor:
    """Holds one copy of the model; turns batches of raw shard members into the task's per-sample outputs."""

    def __init__(self, model_files: dict[str, bytes], facts: dict[str, Any]):
        self._dir = tempfile.TemporaryDirectory()  # the files travel as bytes: actors may run on other nodes
        for name, data in model_files.items():
            (Path(self._dir.name) / name).write_bytes(data)
        torch.set_num_threads(1)
        self.task, self.model = load_task_and_model(self._dir.name)
        self.context = self.task.eval_begin(self.model, EvalFacts.from_manifest(facts))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = {c: np.asarray(batch[c], dtype=object) for c in self.task.eval_columns}
        inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.task.eval_transform(columns).items()}
        with torch.no_grad():
            return {k: v.cpu().numpy() for k, v in self.task.eval_step(self.model, inputs, self.context).items()}


def evaluate_checkpoint(checkpoint: Path, location: str, facts: dict[str, Any], actors: int | None = None,
                        index_dir: str | None = None) -> dict[str, float]:
    """Metrics of the checkpoint at ``checkpoint`` on the shard set at ``location``, through Ray Data actors."""
    import ray
    import ray.data

    config = read_checkpoint_config(checkpoint)
    model_files = {name: (checkpoint / name).read_bytes()
                   for name in ["config.json", "model.safetensors", *config["files"]]}
    task, _ = load_task_and_model(checkpoint)
    urls = [ref.url for ref in ShardSet.open(location, index_dir).refs]
    size = actors or max(1, min(len(urls), int(ray.cluster_resources().get("CPU", 1)) // 2))
    dataset = ray.data.read_webdataset(urls, decoder=None, suffixes=list(task.eval_columns),
                                       override_num_blocks=len(urls)).select_columns(list(task.eval_columns))
    outputs = dataset.map_batches(EvalActor, fn_constructor_kwargs={"model_files": model_files, "facts": facts},
                                  batch_size=EVAL_BATCH_SIZE, batch_format="numpy",
                                  compute=ray.data.ActorPoolStrategy(size=size), num_cpus=1)
    gathered = concat_outputs(outputs.iter_batches(batch_format="numpy", batch_size=None))
    return task.eval_reduce(gathered, EvalFacts.from_manifest(facts))


def evaluate_registered(model_uri: str, location: str, tracking_uri: str, workdir: str | Path | None = None,
                        actors: int | None = None) -> dict[str, float]:
    """Evaluate the version behind ``model_uri`` with its task's own evaluation; record the metrics on it.

    ``workdir`` keeps the index of a shard set made by another tool that cannot be written beside it.
    """
    index_dir = work_index_dir(Path(workdir).resolve()) if workdir else None
    facts = eval_facts(location, index_dir)  # fails clearly on a location that is not a shard set
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    version = resolve_model_version(client, model_uri)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = download_registered_checkpoint(f"models:/{version.name}/{version.version}", tmp, tracking_uri)
        metrics = evaluate_checkpoint(checkpoint, location, facts, actors, index_dir)
    record_evaluation(client, version.name, version.version, metrics, facts["content_hash"])
    return metrics


def promote_registered(model_uri: str, metric: str, mode: Mode, alias: str, tracking_uri: str) -> tuple[bool, str]:
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    return promote(client, resolve_model_version(client, model_uri), metric, mode, alias)
