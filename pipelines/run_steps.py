"""The run lifecycle as small steps with typed results: services, open run, fit, register, promote.

``tvp train``, ``tvp finetune`` and the demo compose these (``training_run.py``),
and scheduled jobs will too. Each step does one thing and says what it did.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ray.train

from cluster.ray_cluster import cluster_is_local, connect
from components.data.loading.shard_plan import ShardSource
from components.tasks.task import Task
from components.tracking.lineage import source_tags
from components.tracking.model_package import log_model_package
from components.tracking.promotion import PromotionError, promote, record_evaluation
from components.tracking.registry import LATEST_ALIAS, register_logged_model
from components.tracking.run_tracker import RunConflict, RunTracker
from components.tracking.tracking_store import (
    TrackingUnavailable,
    check_tracking_server,
    configure_fast_failure,
    artifact_location,
    is_local_store,
    resolve_tracking_uri,
)
from components.training.checkpoint import copy_model_files
from components.training.checkpoint_policy import EVAL_METRICS_KEY
from components.training.ray_trainer import fit
from components.training.train_config import TrainConfig

Echo = Callable[[str], None]


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


@dataclass
class OpenedRun:
    tracker: RunTracker
    run_name: str
    experiment: str
    tracking_uri: str
    lineage: dict[str, str]

    @property
    def run_id(self) -> str:
        return self.tracker.run_id


def open_run(tracking_uri: str, workdir: Path, experiment: str, run_name: str, params: dict[str, Any],
             lineage: dict[str, str]) -> OpenedRun:
    """The MLflow run named ``run_name``: created, or continued with the same params (else ``RunConflict``).

    Besides ``lineage`` the run carries MLflow's own source tags (entry point, commit), which its UI shows.
    """
    tracker = RunTracker.create(tracking_uri, experiment, run_name, artifact_location(tracking_uri, workdir),
                                {**lineage, **source_tags()})
    try:
        tracker.check_params(params, run_name)
    except RunConflict:
        tracker.finish(tracker.previous_status or "FAILED")  # leave the existing run as it was
        raise
    tracker.log_params(params)
    return OpenedRun(tracker, run_name, experiment, tracking_uri, lineage)


@dataclass
class FitResult:
    checkpoint: ray.train.Checkpoint
    metrics: dict[str, float]  # the final report's evaluation metrics (empty without an evaluation set)


def fit_step(run: OpenedRun, task: Task, cfg: TrainConfig, sources: list[ShardSource], workdir: Path,
             evaluation: dict[str, Any] | None, init_weights: bytes | None = None) -> FitResult:
    """Train with Ray Train into ``run``; the workers evaluate on ``evaluation`` after every epoch."""
    result = fit(task, cfg, sources, workdir / "ray_results", run.run_name,
                 tracking={"tracking_uri": run.tracking_uri, "run_id": run.run_id},
                 evaluation=evaluation, init_weights=init_weights)
    reported = result.metrics or {}
    names = [n for n in str(reported.get(EVAL_METRICS_KEY, "")).split(",") if n]
    return FitResult(result.checkpoint, {n: float(reported[n]) for n in names})


@dataclass
class Registration:
    name: str
    version: str
    source: str  # the artifact URI of the registered package
    model_id: str  # the run's LoggedModel that the version was registered from

    @property
    def latest_uri(self) -> str:
        return f"models:/{self.name}@{LATEST_ALIAS}"


def register_step(run: OpenedRun, task: Task, checkpoint: ray.train.Checkpoint, registered_model: str,
                  metrics: dict[str, float], tags: dict[str, str] | None = None) -> Registration:
    """Log the checkpoint as an MLflow pyfunc model of the run and register it as a new version."""
    version_tags = {**run.lineage, **(tags or {}), **{f"train.{k}": f"{v:.4f}" for k, v in metrics.items()}}
    with checkpoint.as_directory() as checkpoint_dir, tempfile.TemporaryDirectory() as tmp:
        model_files = copy_model_files(checkpoint_dir, Path(tmp) / "checkpoint")
        logged = log_model_package(run.tracker.client, run.run_id, model_files, task.inference_inputs,
                                   task.inference_example, tags=version_tags)
    version = register_logged_model(run.tracker.client, registered_model, logged.model_id, run.run_id, tags=version_tags)
    return Registration(registered_model, str(version), logged.artifact_location, logged.model_id)


@dataclass
class PromotionDecision:
    promoted: bool
    reason: str

    def __str__(self) -> str:
        return ("promoted: " if self.promoted else "not promoted: ") + self.reason


def promote_step(run: OpenedRun, registration: Registration, metric: str, metrics: dict[str, float],
                 eval_data_hash: str) -> PromotionDecision:
    """Record the evaluation on the new version and move ``champion`` to it if it beats the current one."""
    if metric not in metrics:
        raise PromotionError(f"--promote-if {metric}: the evaluation gave {sorted(metrics) or 'nothing'}")
    client = run.tracker.client
    record_evaluation(client, registration.name, registration.version, metrics, eval_data_hash)
    candidate = client.get_model_version(registration.name, registration.version)
    promoted, reason = promote(client, candidate, metric)
    return PromotionDecision(promoted, reason)


@dataclass
class TrainingOutcome:
    run_name: str
    run_id: str
    tracking_uri: str
    experiment: str
    registered_model: str
    model_version: str
    model_uri: str
    checkpoint_uri: str
    data_manifest_hash: str
    metrics: dict[str, float] = field(default_factory=dict)
    promotion: str | None = None
    parent: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)
