"""The Ray Train side of the one training loop: ``train_loop_per_worker`` and the ``RayContext`` it runs in.

Everything about training itself is in ``training_loop.py``; this file only
answers the loop's questions from Ray Train: rank and device, the latest
committed checkpoint, reports, preemption of a node, and the driver's stop
request. Each worker's ``tvp`` log is saved beside the run's checkpoints.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import ray
import ray.train
import ray.train.torch

from components.training.loop_context import LoopContext
from components.training.stop_request import StopWatcher
from components.training.training_loop import TrainingLoop
from components.training.worker_logs import attach_worker_log


class RayContext(LoopContext):
    def __init__(self, stop_actor: str | None):
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        storage = ctx.get_storage()
        self.worker_log = attach_worker_log(storage.storage_filesystem, storage.experiment_fs_path, self.rank)
        self.stop_watcher = StopWatcher(stop_actor, self.rank, self.device)
        self._saved_for_preemption = False

    @contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as path:
            yield path

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        self.worker_log.save()

    def stop_requested(self) -> bool:
        return self.stop_watcher.agreed()

    def preempted(self) -> bool:
        preempted = ray.train.get_preemption_info() is not None and not self._saved_for_preemption
        self._saved_for_preemption = self._saved_for_preemption or preempted
        return preempted

    def close(self) -> None:
        self.worker_log.save()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """``config``: the loop's spec (see ``training_loop.py``) plus ``stop_actor``; ``init_weights`` may be an
    object reference to the safetensors bytes a fine-tuning run starts from."""
    ctx = RayContext(config.get("stop_actor"))
    spec = dict(config)
    if isinstance(spec.get("init_weights"), ray.ObjectRef):
        spec["init_weights"] = ray.get(spec["init_weights"])
    if ctx.rank == 0:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        loop = TrainingLoop(spec, ctx)
        loop.attach_tracking()
        loop.restore()
        loop.run()
    finally:
        ctx.close()
