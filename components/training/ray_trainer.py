"""Driver side of training: the datasets, the TorchTrainer, the final checkpoint."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray.train
from ray.train.torch import TorchTrainer

from components.data.shard_dataset import read_shard_dataset
from components.data.shard_reader import read_manifest
from components.training.task import Task
from components.training.train_config import TrainConfig
from components.training.worker_loop import train_loop_per_worker


def fit(
    task: Task,
    cfg: TrainConfig,
    shard_dir: str | Path,
    storage_path: str | Path,
    run_name: str,
    tracking: dict[str, Any] | None = None,
) -> ray.train.Checkpoint:
    """Train ``task`` on a shard set with ``cfg.num_workers`` Ray Train workers; return the final checkpoint.

    ``tracking`` (``tracking_uri`` and ``run_id``) lets rank 0 log into an existing MLflow run.
    """
    samples = read_manifest(shard_dir)["num_samples"]
    if samples < cfg.batch_size:
        raise ValueError(f"{shard_dir} holds {samples} samples, fewer than one batch of {cfg.batch_size}")
    dataset = read_shard_dataset(shard_dir, task.columns).map_batches(task.transform_batch, batch_format="numpy")
    loop_config = {
        "task": task.name,
        "task_config": task.config_dict(),
        "files": task.files,
        "train": asdict(cfg),
        "samples_per_epoch": samples,
        **(tracking or {}),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(name=run_name, storage_path=str(Path(storage_path).resolve())),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {run_name} finished without a checkpoint")
    return result.checkpoint
