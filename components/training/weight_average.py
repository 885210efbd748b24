"""An exponential moving average of the weights (the EMA of the DeiT recipe), kept beside the model.

Each rank keeps the average of its own parameters: under DDP every rank holds
the same weights, under FSDP each its own shards, so the averages stay what
one process would compute. The decay is warmed up, ``min(decay, (1 + n) /
(10 + n))`` after ``n`` updates, so that a short run's average is not
dominated by its random initial weights.

Evaluation and checkpoints use the averaged weights (``applied``); the
optimizer keeps training the live ones.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from components.training.parallel import unwrap


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be between 0 and 1, not {decay}")
        self.decay = decay
        self.updates = 0
        plain = unwrap(model)
        # Floating buffers (batch-norm statistics) are averaged too; integer ones (counters) are not state to average.
        self.live = [p for p in plain.parameters()] + [b for b in plain.buffers() if b.is_floating_point()]
        self.average = [t.detach().clone() for t in self.live]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the live weights; call after each optimizer step."""
        weight = 1.0 - self.current_decay()
        self.updates += 1
        torch._foreach_lerp_(self.average, [t.detach() for t in self.live], weight)

    @torch.no_grad()
    def reset(self, updates: int) -> None:
        """Take the model's current weights as the average (restoring one saved as weights) after ``updates``."""
        torch._foreach_copy_(self.average, [t.detach() for t in self.live])
        self.updates = updates

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the duration; the live ones back afterwards."""
        with torch.no_grad():
            kept = [t.detach().clone() for t in self.live]
            torch._foreach_copy_([t.detach() for t in self.live], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([t.detach() for t in self.live], kept)
