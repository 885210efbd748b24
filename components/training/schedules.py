"""Learning-rate schedules: linear warmup, then cosine decay, step decay or a constant rate."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

ScheduleName = Literal["cosine", "step", "constant"]


def lr_factor(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: ScheduleName = "cosine",
    step_every: int = 1000,
    step_gamma: float = 0.1,
) -> float:
    """Multiplier of the base rate after ``step`` optimizer steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    after = step - warmup_steps
    if schedule == "cosine":
        progress = after / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return step_gamma ** (after // step_every)
    return 1.0


def build_scheduler(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: ScheduleName = "cosine",
    step_every: int = 1000,
    step_gamma: float = 0.1,
) -> LambdaLR:
    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, schedule, step_every, step_gamma))
