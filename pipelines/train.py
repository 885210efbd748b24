"""``tvp train clip``: shard sets → Ray Train → one MLflow run → evaluation → registered version (→ champion).

The demo runs the same steps after building its own data. A named run
(``--name``) that is started again resumes from its latest checkpoint and
continues the same MLflow run.
"""

from __future__ import annotations

import tempfile
from itertools import islice
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from cluster.ray_cluster import cluster_is_local, connect
from components.data.loading.shard_plan import ShardSource
from components.data.shards.shard_reader import iter_samples, read_manifest
from components.data.loading.tokenizer import train_caption_tokenizer
from components.models.clip import CLIPConfig
from components.tracking.lineage import code_version, library_versions
from components.tracking.model_package import save_model_package
from components.tracking.promotion import PromotionError, promote, record_evaluation
from components.tracking.registry import LATEST_ALIAS, register_checkpoint
from components.tracking.run_tracker import RunConflict, RunTracker
from components.tracking.tracking_store import (
    TrackingUnavailable,
    check_tracking_server,
    configure_fast_failure,
    default_artifact_location,
    is_local_store,
    resolve_tracking_uri,
)
from components.training.checkpoint import copy_model_files
from components.tasks.clip import TOKENIZER_FILE, ClipTask, ClipTaskConfig
from components.training.ray_trainer import fit
from components.tasks.registry import load_task_and_model
from components.training.stop_request import TrainingStopped
from components.training.train_config import TrainConfig

TOKENIZER_CAPTIONS = 200_000  # captions read from the shards to train the tokenizer


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrackingConfig(Strict):
    experiment: str = "tvp-demo"
    registered_model: str = "tvp-demo-clip"


class ClipTrainConfig(Strict):
    model: CLIPConfig = Field(default_factory=CLIPConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # Zero-shot prompts for evaluation; "{}" is replaced by each class name.
    zero_shot_templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."])


def prepare_services(workdir: Path, address: str | None) -> str:
    """Check the tracking store, connect to Ray, refuse a local store with a multi-machine cluster; return the URI."""
    tracking_uri = resolve_tracking_uri(workdir)
    configure_fast_failure()
    check_tracking_server(tracking_uri)
    connect(address)
    if is_local_store(tracking_uri) and not cluster_is_local():
        raise TrackingUnavailable(
            f"the Ray cluster has nodes on other machines, but the tracking store {tracking_uri} is local to this "
            "one and its runs would be lost: set MLFLOW_TRACKING_URI to a tracking server every node reaches"
        )
    return tracking_uri


def clip_task_from_shards(cfg: ClipTrainConfig, shard_dirs: list[Path]) -> ClipTask:
    """A CLIP task whose caption tokenizer is trained on the training shards' captions."""
    captions = (s["txt"].decode() for d in shard_dirs for s in iter_samples(d))
    tokenizer = train_caption_tokenizer(islice(captions, TOKENIZER_CAPTIONS), cfg.model.text.vocab_size)
    task_config = ClipTaskConfig(model=cfg.model, zero_shot_templates=list(cfg.zero_shot_templates))
    return ClipTask(task_config, {TOKENIZER_FILE: tokenizer.to_str()})


def train_and_register(
    cfg: ClipTrainConfig,
    sources: list[ShardSource],
    eval_dir: Path | None,
    workdir: Path,
    run_name: str,
    tracking_uri: str,
    promote_if: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, evaluate, register (and maybe promote); return what happened."""
    if promote_if and eval_dir is None:
        raise PromotionError(f"--promote-if {promote_if} needs evaluation data (--eval)")
    manifests = [read_manifest(s.path) for s in sources]  # clear error on an unfinished shard set
    task = clip_task_from_shards(cfg, [Path(s.path) for s in sources])
    lineage = {
        "data_manifest_hash": ",".join(m["content_hash"] for m in manifests),
        "code_version": code_version(),
        "started_from": "scratch",
        **library_versions(),
    }
    if eval_dir is not None:
        lineage["eval_data_manifest_hash"] = read_manifest(eval_dir)["content_hash"]
    artifact_location = default_artifact_location(workdir) if is_local_store(tracking_uri) else None
    tracker = RunTracker.create(tracking_uri, cfg.tracking.experiment, run_name, artifact_location, lineage)
    params = cfg.model_dump(mode="json")
    try:
        tracker.check_params(params, run_name)
    except RunConflict:
        tracker.finish(tracker.previous_status or "FAILED")  # leave the existing run as it was
        raise
    try:
        tracker.log_params(params)
        echo(f"training CLIP with Ray Train: {cfg.train.num_workers} workers, {cfg.train.epochs} epochs "
             f"(run {run_name}, MLflow run {tracker.run_id})")
        checkpoint = fit(task, cfg.train, sources, workdir / "ray_results", run_name,
                         tracking={"tracking_uri": tracking_uri, "run_id": tracker.run_id})
        metrics: dict[str, float] = {}
        with checkpoint.as_directory() as checkpoint_dir:
            if eval_dir is not None:
                echo(f"evaluating on {eval_dir}")
                eval_task, model = load_task_and_model(checkpoint_dir)
                metrics = eval_task.evaluate(model, iter_samples(eval_dir))
                tracker.log_metrics(metrics, step=0)
            echo("registering the checkpoint in the MLflow model registry")
            with tempfile.TemporaryDirectory() as tmp:
                model_files = copy_model_files(checkpoint_dir, Path(tmp) / "checkpoint")
                source = tracker.log_artifacts(save_model_package(model_files, Path(tmp) / "model"), "model")
        version = register_checkpoint(tracker.client, cfg.tracking.registered_model, source, tracker.run_id,
                                      tags={**lineage, **{f"train.{k}": f"{v:.4f}" for k, v in metrics.items()}})
        promotion = None
        if promote_if:
            if promote_if not in metrics:
                raise PromotionError(f"--promote-if {promote_if}: the evaluation gave {sorted(metrics) or 'nothing'}")
            record_evaluation(tracker.client, cfg.tracking.registered_model, version, metrics,
                              lineage["eval_data_manifest_hash"])
            candidate = tracker.client.get_model_version(cfg.tracking.registered_model, version)
            promoted, reason = promote(tracker.client, candidate, promote_if)
            promotion = ("promoted: " if promoted else "not promoted: ") + reason
            echo(promotion)
        gap = tracker.finish("FINISHED")
        if gap["undelivered"]:
            echo(f"  warning: {gap['undelivered']} metric values could not be delivered to {tracking_uri}")
    except TrainingStopped:
        tracker.finish("KILLED")  # resumable: the same name continues this run
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    return {
        "run_name": run_name,
        "run_id": tracker.run_id,
        "tracking_uri": tracking_uri,
        "experiment": cfg.tracking.experiment,
        "registered_model": cfg.tracking.registered_model,
        "model_version": version,
        "model_uri": f"models:/{cfg.tracking.registered_model}@{LATEST_ALIAS}",
        "checkpoint_uri": source,
        "data_manifest_hash": lineage["data_manifest_hash"],
        "metrics": metrics,
        "promotion": promotion,
    }
