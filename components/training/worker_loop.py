"""The one Ray Train worker loop that trains every task.

Each worker builds the task and its model, wraps it for data parallelism,
reads its split of the ``train`` dataset, and reports a checkpoint from rank
0 after every epoch. Only rank 0 talks to MLflow.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any

import ray.train
import ray.train.torch
import torch
from pydantic import TypeAdapter

from components.training.checkpoint import save_checkpoint
from components.training.optimizers import build_adamw
from components.training.registry import build_task
from components.training.schedules import warmup_cosine
from components.training.train_config import TrainConfig

log = logging.getLogger("tvp.train")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """``config``: ``task``, ``task_config``, ``files``, ``train`` (TrainConfig fields),
    ``samples_per_epoch``, and optionally ``tracking_uri`` + ``run_id`` for rank 0 to log to."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TypeAdapter(TrainConfig).validate_python(config["train"])
    task = build_task(config["task"], config["task_config"], config["files"])
    torch.manual_seed(cfg.seed)  # same initial weights on every rank

    model = ray.train.torch.prepare_model(task.build_model())
    optimizer = build_adamw(model, cfg.lr, cfg.weight_decay)
    per_worker = cfg.batch_size // world
    steps_per_epoch = (config["samples_per_epoch"] // world) // per_worker
    scheduler = warmup_cosine(optimizer, cfg.warmup_steps, max(1, steps_per_epoch * cfg.epochs))

    tracker = None
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        if config.get("run_id"):
            from components.tracking.run_tracker import RunTracker  # MLflow only where it is used

            tracker = RunTracker(config["tracking_uri"], config["run_id"])

    data = ray.train.get_dataset_shard("train")
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        started, samples, loss_sum, batches = time.perf_counter(), 0, 0.0, 0
        for batch in data.iter_torch_batches(batch_size=per_worker, drop_last=True):
            loss, metrics = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            batches += 1
            samples += per_worker * world
            loss_sum += metrics["loss"]
            if tracker and step % cfg.log_every == 0:
                tracker.log_metrics({**metrics, "lr": scheduler.get_last_lr()[0]}, step)
        elapsed = time.perf_counter() - started
        epoch_metrics = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / max(1, batches),
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
        }
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint(tmp, _unwrap(model), task.name, task.config_dict(), task.files,
                                position={"epoch": epoch, "step": step})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                if tracker:
                    tracker.log_metrics({k: v for k, v in epoch_metrics.items() if k != "step"}, step)
                log.info(
                    "epoch %d/%d  step %d  loss %.4f  %.0f samples/s",
                    epoch, cfg.epochs, step, epoch_metrics["train_loss"], epoch_metrics["samples_per_s"],
                )
            ray.train.report(epoch_metrics, checkpoint=checkpoint)
