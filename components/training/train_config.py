"""Settings of the shared training loop, the same for every model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 64  # global samples per optimizer step: micro-batch × workers × grad_accum_steps
    grad_accum_steps: int = 1  # micro-batches whose gradients add up to one optimizer step
    lr: float = 1e-3
    backbone_lr: float | None = None  # rate for the task's backbone parameters; None: same as lr
    weight_decay: float = 0.1  # applied to matrices only, never to biases, norms or scalars
    # Layer-wise rate decay for fine-tuning: the top layer (the head) takes lr, each layer below it
    # layer_decay times the rate of the one above (BEiT/DeiT III's 0.65-0.75). None: one rate for all. Needs a
    # task whose model has layers (Task.layer_ids).
    layer_decay: float | None = None
    # Exponential moving average of the weights (DeiT's model EMA, e.g. 0.9998): evaluation, checkpoints and the
    # registered model use the average, training continues on the live weights. None: off.
    ema_decay: float | None = None
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = 0  # linear warmup before the schedule
    lr_step_every: int = 1000  # "step" schedule: multiply the rate by lr_step_gamma every this many steps
    lr_step_gamma: float = 0.1
    grad_clip_norm: float | None = None  # clip the global gradient norm to this; None: no clipping
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype; fp16 adds a gradient scaler
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # fsdp shards parameters, gradients and optimizer state
    # Each worker reads its shards in windows of consecutive shards holding at least this many samples, each
    # window in a seeded random order (so a resume skips finished windows unread); 0 reads in shard order.
    shuffle_buffer: int = 1000
    loader_workers: int = 1  # decoding processes beside each training worker (a torch DataLoader); 0: in-process
    eval_every_steps: int | None = None  # also evaluate (and checkpoint) every this many steps; epochs end with one
    eval_batch_size: int = 128  # samples per evaluation batch on each worker
    samples_per_epoch: int | None = None  # resampled epochs of this many samples; None: every shard once
    checkpoint_every_steps: int | None = None  # also checkpoint mid-epoch every this many steps
    checkpoint_every_minutes: float | None = None  # ... or when this much time has passed since the last one
    keep_checkpoints: int | None = 1  # best checkpoints kept besides the latest (always kept); None keeps all
    # What "best" means: train_loss, or an evaluation metric (checkpoints taken without an evaluation then
    # count as the latest only).
    checkpoint_metric: str = "train_loss"
    checkpoint_metric_mode: Literal["min", "max"] = "min"
    sample_log_dir: str | None = None  # if set, each rank appends "epoch step sample_ids..." per step here
    # (and "# start at step N" each time the loop starts)
    # Every this many steps, ask Ray whether a node of the run is being drained for preemption (a barrier
    # across workers, so not every step); if so, checkpoint right away.
    preemption_check_every_steps: int = 10
    placement_strategy: Literal["PACK", "SPREAD"] = "PACK"  # SPREAD puts workers on as many nodes as it can
    system_metrics_every_s: float = 10.0  # rank 0 logs its machine's CPU, memory, disk, network (and GPU memory); 0: never
    max_failures: int = 0  # worker-group restarts Ray Train may make, each resuming from the latest checkpoint
    num_workers: int = 2  # Ray Train workers (processes)
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    log_every: int = 10  # steps between metric logs on rank 0
    seed: int = 0

    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self) -> None:
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], not {self.layer_decay}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be between 0 and 1, not {self.ema_decay}")
        per_step = self.num_workers * self.grad_accum_steps
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by num_workers × grad_accum_steps ({per_step})"
            )

    @property
    def micro_batch_size(self) -> int:
        """Samples per worker per forward pass."""
        return self.batch_size // (self.num_workers * self.grad_accum_steps)
