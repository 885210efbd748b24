"""The training loop in one process, without Ray: for checking learning, fine-tuning and resume cheaply.

It runs exactly the loop the Ray Train workers run (``TrainingLoop``), with
rank 0 of 1, data read in-process, and checkpoints in a folder. Running it
again on the same folder resumes from the latest checkpoint there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from components.data.loading.rank_reader import OpenSamples
from components.data.shards.tar_samples import iter_shard_samples
from components.training.loop_context import LocalContext
from components.training.training_loop import TrainingLoop


@dataclass
class HarnessRun:
    loop: TrainingLoop
    reports: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    resumed: bool = False

    @property
    def model(self) -> torch.nn.Module:
        return self.loop.plain_model

    @property
    def final_metrics(self) -> dict[str, Any]:
        return self.reports[-1] if self.reports else {}


def train_in_process(spec: dict[str, Any], checkpoint_root: str | Path, stop_after_steps: int | None = None,
                     open_samples: OpenSamples = iter_shard_samples) -> HarnessRun:
    """Train ``spec`` (see ``training_loop.py``) in this process, checkpointing under ``checkpoint_root``.

    ``stop_after_steps`` stops the run after that many steps of this call, checkpointing first, as a stopped
    job does; calling again with the same root resumes. A spec with ``tracking`` logs into that MLflow run,
    as rank 0 of a Ray Train job does.
    """
    spec = {**spec, "train": {**spec["train"], "num_workers": 1}}
    context = LocalContext(checkpoint_root, stop_after_steps)
    loop = TrainingLoop(spec, context, open_samples)
    loop.attach_tracking()
    resumed = loop.restore()
    stopped = loop.run()
    return HarnessRun(loop, context.reports, stopped, resumed)


def _rank_main(rank: int, world: int, port: int, spec: dict[str, Any], checkpoint_root: str,
               tasks: dict[str, str]) -> None:
    import torch.distributed as dist

    from components.tasks.registry import register_task

    for name, target in tasks.items():  # tasks registered at run time in the parent (tests' toy tasks)
        register_task(name, target)
    # As many math threads as a Ray Train worker of this config gets: the same arithmetic, the same rounding.
    torch.set_num_threads(max(1, int(spec["train"].get("cpus_per_worker", 1))))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        context = LocalContext(checkpoint_root, rank=rank, world=world)
        loop = TrainingLoop(spec, context)
        loop.restore()
        loop.run()
    finally:
        dist.destroy_process_group()


def train_in_processes(spec: dict[str, Any], checkpoint_root: str | Path, world: int = 2) -> Path:
    """``spec`` trained by ``world`` local gloo processes, as Ray Train's workers would, without Ray;
    return the folder of the final checkpoint (rank 0 writes checkpoints under ``checkpoint_root``)."""
    import socket

    import torch.multiprocessing as mp

    from components.tasks.registry import TASKS

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = {**spec, "train": {**spec["train"], "num_workers": world}}
    mp.start_processes(_rank_main, args=(world, port, spec, str(checkpoint_root), dict(TASKS)), nprocs=world, join=True,
                       start_method="spawn")
    return sorted(Path(checkpoint_root).glob("checkpoint_*"))[-1]
