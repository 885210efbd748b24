"""The one Ray Train worker loop that trains every task.

Each worker builds the task and its model, wraps it for data parallelism
(DDP or FSDP), reads its split of the ``train`` dataset in micro-batches,
and takes optimizer steps through ``OptimizerStep``. After every epoch all
ranks gather the full weights and rank 0 reports the checkpoint. Only rank
0 talks to MLflow.
"""

from __future__ import annotations

import logging
import tempfile
import time
from typing import Any, Iterator

import ray.train
import ray.train.torch
import torch
from pydantic import TypeAdapter

from components.training.checkpoint import save_checkpoint_state
from components.training.optimizers import build_adamw
from components.training.parallel import full_state_dict, wrap_model
from components.training.registry import build_task
from components.training.schedules import build_scheduler
from components.training.train_config import TrainConfig
from components.training.train_step import OptimizerStep

log = logging.getLogger("tvp.train")


def _grouped(batches: Iterator[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive groups of ``size`` micro-batches; a short last group is dropped."""
    group: list[dict] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """``config``: ``task``, ``task_config``, ``files``, ``train`` (TrainConfig fields),
    ``samples_per_epoch``, and optionally ``tracking_uri`` + ``run_id`` for rank 0 to log to."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TypeAdapter(TrainConfig).validate_python(config["train"])
    task = build_task(config["task"], config["task_config"], config["files"])
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank

    model = wrap_model(task.build_model(), cfg.parallelism, device)
    optimizer = build_adamw(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr, task.backbone_prefixes)
    steps_per_epoch = (config["samples_per_epoch"] // world) // (cfg.micro_batch_size * cfg.grad_accum_steps)
    scheduler = build_scheduler(optimizer, max(1, steps_per_epoch * cfg.epochs), cfg.warmup_steps, cfg.schedule,
                                cfg.lr_step_every, cfg.lr_step_gamma)
    step_fn = OptimizerStep(model, task.loss, optimizer, scheduler, cfg.precision, cfg.grad_clip_norm, device)

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
        started, samples, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
        batches = data.iter_torch_batches(batch_size=cfg.micro_batch_size, drop_last=True, device="cpu")
        for micro_batches in _grouped(iter(batches), cfg.grad_accum_steps):
            metrics = step_fn(micro_batches)
            step += 1
            steps += 1
            samples += cfg.batch_size
            loss_sum += metrics["loss"]
            if tracker and step % cfg.log_every == 0:
                tracker.log_metrics(metrics, step)
        elapsed = time.perf_counter() - started
        epoch_metrics = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / max(1, steps),
            "samples_per_s": samples / elapsed if elapsed > 0 else 0.0,
        }
        weights = full_state_dict(model)  # a collective under FSDP: every rank takes part
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint_state(tmp, weights, task.name, task.config_dict(), task.files,
                                      position={"epoch": epoch, "step": step})
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                if tracker:
                    tracker.log_metrics({k: v for k, v in epoch_metrics.items() if k != "step"}, step)
                log.info(
                    "epoch %d/%d  step %d  loss %.4f  %.0f samples/s",
                    epoch, cfg.epochs, step, epoch_metrics["train_loss"], epoch_metrics["samples_per_s"],
                )
            ray.train.report(epoch_metrics, checkpoint=checkpoint)
