"""The one Ray Train worker loop that trains every task.

Each worker builds the task and its model, wraps it for data parallelism
(DDP or FSDP), and reads its own planned shards (see
``components/data/loading/shard_plan.py``) in micro-batches, taking optimizer steps
through ``OptimizerStep``. Checkpoints hold the weights, the optimizer,
schedule and scaler state, and the data position; a worker group restarted
by Ray Train resumes from the latest one and skips exactly the batches it
had trained on. Only rank 0 writes checkpoints and talks to MLflow.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import ray.train
import ray.train.torch
import torch
from pydantic import TypeAdapter

from components.data.loading.background_iterator import BackgroundIterator
from components.data.loading.rank_reader import SAMPLE_ID, rank_batches
from components.data.loading.shard_plan import EpochPlanner, ShardSource, rank_shards
from components.tracking.system_metrics import SystemSampler
from components.training.checkpoint import load_weights, save_checkpoint_state
from components.training.optimizers import build_adamw
from components.training.parallel import full_state_dict, load_full_state_dict, wrap_model
from components.tasks.registry import build_task
from components.training.schedules import build_scheduler
from components.training.stop_request import StopWatcher
from components.training.train_config import TrainConfig
from components.training.train_state import (
    capture_train_state,
    load_train_state,
    restore_train_state,
    save_train_state,
    step_seed,
)
from components.training.throughput import EpochMeter
from components.training.train_step import OptimizerStep
from components.training.worker_logs import attach_worker_log

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
    """``config``: ``task``, ``task_config``, ``files``, ``train`` (TrainConfig fields), ``sources``
    ([shard set path, weight] pairs), and optionally ``tracking_uri`` + ``run_id`` for rank 0 to log to."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = TypeAdapter(TrainConfig).validate_python(config["train"])
    task = build_task(config["task"], config["task_config"], config["files"])
    device = ray.train.torch.get_device()
    plans = EpochPlanner([ShardSource(path, weight) for path, weight in config["sources"]], cfg.seed,
                         cfg.samples_per_epoch)
    per_rank_step = cfg.micro_batch_size * cfg.grad_accum_steps
    total_steps = sum(plans.steps(e, world, per_rank_step) for e in range(1, cfg.epochs + 1))

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = wrap_model(task.build_model(), cfg.parallelism, device)
    optimizer = build_adamw(model, cfg.lr, cfg.weight_decay, cfg.backbone_lr, task.backbone_prefixes)
    scheduler = build_scheduler(optimizer, max(1, total_steps), cfg.warmup_steps, cfg.schedule,
                                cfg.lr_step_every, cfg.lr_step_gamma)
    step_fn = OptimizerStep(model, task.loss, optimizer, scheduler, cfg.precision, cfg.grad_clip_norm, device)

    position = {"epoch": 1, "epoch_step": 0, "step": 0}
    resumed = ray.train.get_checkpoint()
    if resumed:
        with resumed.as_directory() as path:
            weights_holder = task.build_model()
            load_weights(path, weights_holder)
            load_full_state_dict(model, weights_holder.state_dict())
            state = load_train_state(path)
            if state is not None:
                position = restore_train_state(model, step_fn, state)

    storage = ctx.get_storage()
    worker_log = attach_worker_log(storage.storage_filesystem, storage.experiment_fs_path, rank)
    log.info("rank %d of %d on %s, device %s", rank, world, socket.gethostname(), device)

    tracker = sampler = None
    if rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        if resumed:
            log.info("resuming at epoch %d, step %d", position["epoch"], position["step"])
        if config.get("run_id"):
            from components.tracking.run_tracker import RunTracker  # MLflow only where it is used

            tracker = RunTracker(config["tracking_uri"], config["run_id"])
            sampler = SystemSampler(cfg.system_metrics_every_s)

    def report(metrics: dict[str, float]) -> None:
        weights = full_state_dict(model)  # collectives under FSDP: every rank takes part
        state = capture_train_state(model, step_fn, position)
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                save_checkpoint_state(tmp, weights, task.name, task.config_dict(), task.files, position=position)
                save_train_state(tmp, state)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({**metrics, **position}, checkpoint=checkpoint)
        worker_log.save()

    sample_log = None
    if cfg.sample_log_dir:
        Path(cfg.sample_log_dir).mkdir(parents=True, exist_ok=True)
        sample_log = open(Path(cfg.sample_log_dir) / f"rank{rank}.log", "a")

    stop_watcher = StopWatcher(config.get("stop_actor"), rank, device)
    saved_for_preemption = False
    stopping = False
    last_checkpoint = time.monotonic()
    def epoch_reader(epoch: int, skip_steps: int) -> BackgroundIterator:
        shards = rank_shards(plans.shards(epoch), rank, world)
        return BackgroundIterator(lambda: rank_batches(
            shards, task.columns, task.transform_batch, cfg.micro_batch_size, cfg.shuffle_buffer,
            seed=step_seed(cfg.seed, rank, epoch), skip=skip_steps * cfg.grad_accum_steps,
        ))

    step = position["step"]
    next_reader = None
    for epoch in range(position["epoch"], cfg.epochs + 1):
        model.train()
        steps_this_epoch = plans.steps(epoch, world, per_rank_step)
        done = position["epoch_step"] if epoch == position["epoch"] else 0
        batches = next_reader or epoch_reader(epoch, done)
        # The next epoch's pipeline starts now, in the background, so that its start-up overlaps this epoch.
        next_reader = epoch_reader(epoch + 1, 0) if epoch < cfg.epochs else None
        meter = EpochMeter()
        groups = _grouped(batches, cfg.grad_accum_steps)
        while done < steps_this_epoch:
            waited = time.perf_counter()
            micro_batches = next(groups, None)
            meter.wait(time.perf_counter() - waited)
            if micro_batches is None:
                break
            ids = [int(i) for batch in micro_batches for i in batch.pop(SAMPLE_ID)]
            if sample_log:
                sample_log.write(f"{epoch} {step + 1} {' '.join(map(str, ids))}\n")
                sample_log.flush()
            torch.manual_seed(step_seed(cfg.seed, rank, step))
            tokens = sum(task.count_tokens(batch) for batch in micro_batches)
            metrics = step_fn(micro_batches)
            step, done = step + 1, done + 1
            meter.step(len(ids), tokens, metrics["loss"])
            position = {"epoch": epoch, "epoch_step": done, "step": step}
            if tracker and step % cfg.log_every == 0:
                tracker.log_metrics(metrics, step)
            if sampler and sampler.due():
                tracker.log_metrics(sampler.sample(), step)
            due_steps = cfg.checkpoint_every_steps and step % cfg.checkpoint_every_steps == 0
            due_time = cfg.checkpoint_every_minutes and time.monotonic() - last_checkpoint > 60 * cfg.checkpoint_every_minutes
            stopping = stop_watcher.agreed()
            preempted = False
            if cfg.preemption_check_every_steps and step % cfg.preemption_check_every_steps == 0:
                preempted = ray.train.get_preemption_info() is not None and not saved_for_preemption
                saved_for_preemption = saved_for_preemption or preempted
                if preempted and rank == 0:
                    log.warning("a node of this run is being preempted: checkpointing at step %d", step)
            triggers = {"stop": stopping, "preemption": preempted, "steps": due_steps, "minutes": due_time}
            trigger = next((name for name, due in triggers.items() if due), None)
            if done < steps_this_epoch and trigger:
                report({"train_loss": metrics["loss"], "trigger": trigger})
                last_checkpoint = time.monotonic()
            if stopping:
                break
        batches.close()
        if stopping and next_reader:
            next_reader.close()
        if stopping and done < steps_this_epoch:
            break  # mid-epoch: checkpointed above; the epoch's metrics come when it is finished after resuming
        position = {"epoch": epoch + 1, "epoch_step": 0, "step": step}
        epoch_metrics = meter.metrics(device)
        if rank == 0:
            if tracker:
                tracker.log_metrics({**epoch_metrics, "epoch": epoch}, step)
            log.info("epoch %d/%d  step %d  loss %.4f  %.0f samples/s  data wait %.0f%%",
                     epoch, cfg.epochs, step, epoch_metrics["train_loss"], epoch_metrics["samples_per_s"],
                     100 * epoch_metrics["data_wait_fraction"])
        report({**epoch_metrics, "trigger": "epoch"})
        last_checkpoint = time.monotonic()
        if stopping:
            break

    if stopping and rank == 0:
        log.warning("stop requested: checkpointed at step %d; run again with the same name to resume", step)
    if tracker:
        gap = tracker.flush()
        if gap["undelivered"] or gap["delivered_late"]:
            log.warning("tracking gap: %(undelivered)d metric values never reached MLflow, %(delivered_late)d arrived late", gap)
    worker_log.save()
