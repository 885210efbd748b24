"""Settings of the shared training loop, the same for every model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 64  # global batch; each worker takes batch_size / num_workers
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 0  # linear warmup, then cosine decay to zero over the run
    num_workers: int = 2  # Ray Train workers (processes)
    cpus_per_worker: float = 1.0
    log_every: int = 10  # steps between metric logs on rank 0
    seed: int = 0

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by num_workers {self.num_workers}")
