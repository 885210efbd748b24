"""One optimizer step: micro-batches under autocast, accumulated gradients, clipping, scaler, schedule.

Plain torch; the worker loop feeds it batches and the tests drive it directly.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from components.training.precision import Precision, autocast, grad_scaler


class OptimizerStep:
    """Call with ``grad_accum_steps`` micro-batches; returns the step's mean metrics, grad norm and rate."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,  # (model, batch) -> (loss, metrics): a task's ``loss``
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        precision: Precision = "fp32",
        grad_clip_norm: float | None = None,
        device: torch.device = torch.device("cpu"),
    ):
        self.model, self.loss_fn, self.optimizer, self.scheduler = model, loss_fn, optimizer, scheduler
        self.precision, self.grad_clip_norm, self.device = precision, grad_clip_norm, device
        self.scaler = grad_scaler(precision, device)

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        # DDP all-reduces on every backward; skipping it until the last micro-batch gives the same mean gradient.
        if not last and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def __call__(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        totals: dict[str, float] = {}
        for i, batch in enumerate(micro_batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self._no_sync(last=i == len(micro_batches) - 1):
                with autocast(self.precision, self.device):
                    loss, metrics = self.loss_fn(self.model, batch)
                self.scaler.scale(loss / len(micro_batches)).backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value / len(micro_batches)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm or math.inf)
        self.scaler.step(self.optimizer)  # skipped by the scaler when fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {**totals, "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
