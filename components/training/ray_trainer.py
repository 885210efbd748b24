"""Driver side of training: the TorchTrainer over planned shard sets, and its final checkpoint."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import ray.train
from ray.train.torch import TorchTrainer

from components.data.loading.shard_plan import EpochPlanner, ShardSource
from components.data.shards.shard_reader import ShardSetError
from components.tasks.task import Task
from components.training.stop_request import TrainingStopped, stop_on_sigterm
from components.training.train_config import TrainConfig
from components.training.worker_logs import LOG_FOLDER, download_worker_logs
from components.training.worker_loop import train_loop_per_worker

log = logging.getLogger("tvp.train")
HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # how often the controller polls the workers
REPORT_POLL_INTERVAL_S = 0.5


def _check_sources(sources: Sequence[ShardSource], cfg: TrainConfig) -> None:
    """Fail in the driver, with a clear message, on data the workers could not train on."""
    per_rank_step = cfg.micro_batch_size * cfg.grad_accum_steps
    plans = EpochPlanner(list(sources), cfg.seed, cfg.samples_per_epoch)
    if plans.steps(1, cfg.num_workers, per_rank_step) < 1:
        raise ShardSetError(
            f"some of the {cfg.num_workers} workers get fewer samples per epoch than one step "
            f"({per_rank_step}): lower batch_size or add data"
        )


def fit(
    task: Task,
    cfg: TrainConfig,
    sources: Sequence[ShardSource],
    storage_path: str | Path,
    run_name: str,
    tracking: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    init_weights: bytes | None = None,
) -> ray.train.Result:
    """Train ``task`` on shard sets with ``cfg.num_workers`` Ray Train workers; return the result (its
    ``checkpoint`` is the final one, its ``metrics`` that checkpoint's report, evaluation included).

    Rerunning with the same ``storage_path`` (a folder every node sees, or ``s3://…``) and ``run_name`` resumes
    from that run's latest checkpoint. SIGTERM to this process checkpoints the current step and raises
    ``TrainingStopped``.
    ``tracking`` (``tracking_uri`` and ``run_id``) lets rank 0 log into an existing MLflow run;
    ``evaluation`` (``location`` and ``facts`` of a held-out shard set) is evaluated by the workers at every
    epoch's end and every ``eval_every_steps``; ``init_weights`` (safetensors bytes) start a fine-tuning run.
    """
    _check_sources(sources, cfg)
    # Ray Train's controller takes one report per poll (every 2 s by default), and a worker's next report
    # waits for the last: with short epochs that, not training, set the pace. The driver hands this
    # setting to the controller, on any cluster.
    os.environ.setdefault(HEALTH_CHECK_INTERVAL_ENV, str(REPORT_POLL_INTERVAL_S))
    extra: dict[str, Any] = {"tracking": tracking, "eval": evaluation}
    if init_weights is not None:
        extra["init_weights"] = ray.put(init_weights)  # once in the object store, not once per worker
    with stop_on_sigterm() as (stop_name, stop_actor):
        try:
            result = _trainer(task, cfg, sources, storage_path, run_name, {**extra, "stop_actor": stop_name}).fit()
        finally:
            if tracking:
                _archive_worker_logs(storage_path, run_name, tracking)
        stop_reason = ray.get(stop_actor.reason.remote())
    if stop_reason:
        step = (result.metrics or {}).get("step", "?")
        raise TrainingStopped(f"training run {run_name} stopped on {stop_reason} after checkpointing at step {step}; "
                              "start it again with the same name to resume")
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint")
    return result


def _archive_worker_logs(storage_path: str | Path, run_name: str, tracking: dict[str, Any]) -> None:
    """Copy the workers' logs (every attempt's) from the run's storage to its MLflow run, under ``worker_logs/``."""
    from components.tracking.run_tracker import UNAVAILABLE, RunTracker  # MLflow only where it is used

    with tempfile.TemporaryDirectory() as tmp:
        try:
            if download_worker_logs(storage_uri(storage_path), run_name, tmp):
                RunTracker(tracking["tracking_uri"], tracking["run_id"]).log_artifacts(tmp, LOG_FOLDER)
        except (*UNAVAILABLE, OSError) as exc:
            log.warning("could not archive the worker logs to MLflow: %s", exc)


def storage_uri(path: str | Path) -> str:
    """A local folder as an absolute path; object storage (``s3://…``, ``gs://…``) as given."""
    return str(path) if "://" in str(path) else str(Path(path).resolve())


def _trainer(task: Task, cfg: TrainConfig, sources: Sequence[ShardSource], storage_path: str | Path,
             run_name: str, extra: dict[str, Any]) -> TorchTrainer:
    loop_config = {
        "task": task.name,
        "task_config": task.config_dict(),
        "files": task.files,
        "train": asdict(cfg),
        "sources": [[storage_uri(s.path), s.weight, s.index_dir] for s in sources],
        **extra,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker},
            placement_strategy=cfg.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_uri(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            # Ray Train keeps the latest checkpoint besides the best ``num_to_keep``.
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints,
                checkpoint_score_attribute=cfg.checkpoint_metric,
                checkpoint_score_order=cfg.checkpoint_metric_mode,
            ),
        ),
    )
