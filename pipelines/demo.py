"""The main job: embedded digits → image-text table → shards → Ray Train CLIP → MLflow run and registry → zero-shot."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.ray_cluster import cluster_is_local, connect
from components.data.atomic_files import write_json_atomic
from components.data.digits_demo_data import CLASS_NAMES, PROMPT_TEMPLATES, build_digits_tables
from components.data.image_processing import ImageConfig
from components.data.shard_plan import ShardSource
from components.data.shard_reader import iter_samples
from components.data.tokenizer import train_caption_tokenizer
from components.models.clip import CLIPConfig
from components.tracking.lineage import code_version, library_versions
from components.tracking.registry import LATEST_ALIAS, register_checkpoint
from components.tracking.run_tracker import RunTracker
from components.tracking.tracking_store import (
    check_tracking_server,
    configure_fast_failure,
    default_artifact_location,
    is_local_store,
    TrackingUnavailable,
    resolve_tracking_uri,
)
from components.training.checkpoint import copy_model_files
from components.training.clip_task import TOKENIZER_FILE, ClipTask, ClipTaskConfig
from components.training.ray_trainer import fit
from components.training.registry import load_task_and_model
from components.training.train_config import TrainConfig
from pipelines.ingest_image_text import ingest_image_text


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DemoDataConfig(Strict):
    source_size: int = Field(64, ge=8, description="side of the PNGs built from the 8x8 digits")
    heldout_fraction: float = Field(0.2, gt=0, lt=1, description="share of images kept for zero-shot evaluation")
    rows_per_shard: int = Field(256, ge=1)
    seed: int = 0  # the train/held-out split and caption choice
    image: ImageConfig = Field(default_factory=ImageConfig)


class TrackingConfig(Strict):
    experiment: str = "tvp-demo"
    registered_model: str = "tvp-demo-clip"


class DemoConfig(Strict):
    data: DemoDataConfig = Field(default_factory=DemoDataConfig)
    model: CLIPConfig = Field(default_factory=CLIPConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _sizes_agree(self) -> "DemoConfig":
        if self.model.vision.image_size != self.data.image.image_size:
            raise ValueError(
                f"model.vision.image_size ({self.model.vision.image_size}) must equal "
                f"data.image.image_size ({self.data.image.image_size})"
            )
        return self


def mlflow_ui_command(tracking_uri: str) -> str:
    """The exact command that browses this store (a server is simply opened in a browser)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return f"{mlflow_bin} ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def run_demo(
    cfg: DemoConfig, workdir: str | Path, address: str | None = None, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the whole demo in ``workdir``; return the summary (also written to ``workdir/summary.json``)."""
    started = time.monotonic()
    work = Path(workdir).resolve()
    tracking_uri = resolve_tracking_uri(work)
    configure_fast_failure()
    check_tracking_server(tracking_uri)
    connect(address)
    if is_local_store(tracking_uri) and not cluster_is_local():
        raise TrackingUnavailable(
            f"the Ray cluster has nodes on other machines, but the tracking store {tracking_uri} is local to this "
            "one and its runs would be lost: set MLFLOW_TRACKING_URI to a tracking server every node reaches"
        )

    echo("[1/5] building the image-text table from scikit-learn's digits")
    tables = build_digits_tables(work / "source", cfg.data.source_size, cfg.data.heldout_fraction, cfg.data.seed)
    echo(f"  {tables.num_train} training rows, {tables.num_heldout} held-out rows in {work / 'source'}")

    echo("[2/5] sharding with Ray Data (decode, validate, resize, write WebDataset)")
    shards = {split: work / "shards" / split for split in ("train", "heldout")}
    train_manifest = ingest_image_text(tables.train, shards["train"], cfg.data.image, cfg.data.rows_per_shard, echo=echo)
    heldout_manifest = ingest_image_text(tables.heldout, shards["heldout"], cfg.data.image, cfg.data.rows_per_shard, echo=echo)

    captions = pq.read_table(tables.train, columns=["caption"]).column("caption").to_pylist()
    tokenizer = train_caption_tokenizer(captions, cfg.model.text.vocab_size)
    task = ClipTask(
        ClipTaskConfig(model=cfg.model, zero_shot_templates=list(PROMPT_TEMPLATES)),
        {TOKENIZER_FILE: tokenizer.to_str()},
    )

    run_name = f"clip-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    lineage = {
        "data_manifest_hash": train_manifest["content_hash"],
        "eval_data_manifest_hash": heldout_manifest["content_hash"],
        "code_version": code_version(),
        "started_from": "scratch",
        **library_versions(),
    }
    artifact_location = default_artifact_location(work) if is_local_store(tracking_uri) else None
    tracker = RunTracker.create(tracking_uri, cfg.tracking.experiment, run_name, artifact_location, lineage)
    try:
        tracker.log_params(cfg.model_dump(mode="json"))
        echo(f"[3/5] training CLIP with Ray Train: {cfg.train.num_workers} workers, {cfg.train.epochs} epochs "
             f"(MLflow run {tracker.run_id})")
        checkpoint = fit(task, cfg.train, [ShardSource(str(shards["train"]))], work / "ray_results", run_name,
                         tracking={"tracking_uri": tracking_uri, "run_id": tracker.run_id})

        echo("[4/5] zero-shot classification of the held-out images with unseen prompt templates")
        with checkpoint.as_directory() as checkpoint_dir:
            eval_task, model = load_task_and_model(checkpoint_dir)
            metrics = eval_task.evaluate(model, iter_samples(shards["heldout"]))
            chance = 1.0 / len(CLASS_NAMES)
            tracker.log_metrics({"zero_shot_top1": metrics["zero_shot_top1"], "chance_top1": chance}, step=0)

            echo("[5/5] registering the checkpoint in the MLflow model registry")
            with tempfile.TemporaryDirectory() as model_dir:
                source = tracker.log_artifacts(copy_model_files(checkpoint_dir, model_dir), "checkpoint")
        version = register_checkpoint(
            tracker.client, cfg.tracking.registered_model, source, tracker.run_id,
            tags={**lineage, "zero_shot_top1": f"{metrics['zero_shot_top1']:.4f}"},
        )
        gap = tracker.finish("FINISHED")
        if gap["undelivered"]:
            echo(f"  warning: {gap['undelivered']} metric values could not be delivered to {tracking_uri}")
    except BaseException:
        tracker.finish("FAILED")
        raise

    summary = {
        "workdir": str(work),
        "shards_dir": str(shards["train"]),
        "heldout_shards_dir": str(shards["heldout"]),
        "num_train_samples": train_manifest["num_samples"],
        "num_heldout_samples": heldout_manifest["num_samples"],
        "data_manifest_hash": train_manifest["content_hash"],
        "tracking_uri": tracking_uri,
        "experiment": cfg.tracking.experiment,
        "run_id": tracker.run_id,
        "registered_model": cfg.tracking.registered_model,
        "model_version": version,
        "model_uri": f"models:/{cfg.tracking.registered_model}@{LATEST_ALIAS}",
        "checkpoint_uri": source,
        "zero_shot_top1": metrics["zero_shot_top1"],
        "chance_top1": chance,
        "duration_s": round(time.monotonic() - started, 1),
        "mlflow_ui": mlflow_ui_command(tracking_uri),
    }
    write_json_atomic(work / "summary.json", summary)
    return summary
