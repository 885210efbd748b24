"""The resumable part of a checkpoint: optimizer, schedule, loss scaler and data position.

Saved beside the weights as ``train_state.pt`` and read back with
``torch.load(weights_only=True)``, which refuses anything but tensors and
plain containers, so a checkpoint cannot carry code. Random state is not
saved: each step reseeds from (seed, rank, step), so it follows from the
position alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from components.training.parallel import unwrap
from components.training.train_step import OptimizerStep

TRAIN_STATE_FILE = "train_state.pt"


def capture_train_state(model: nn.Module, step_fn: OptimizerStep, position: dict[str, int]) -> dict[str, Any]:
    """Everything but the weights needed to continue; a collective under FSDP (call on every rank)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {
        "optimizer": get_optimizer_state_dict(unwrap(model), step_fn.optimizer, options=options),
        "step": step_fn.state_dict(),
        "position": dict(position),
    }


def save_train_state(path: str | Path, state: dict[str, Any]) -> None:
    torch.save(state, Path(path) / TRAIN_STATE_FILE)


def load_train_state(path: str | Path) -> dict[str, Any] | None:
    file = Path(path) / TRAIN_STATE_FILE
    return torch.load(file, weights_only=True, map_location="cpu") if file.is_file() else None


def restore_train_state(model: nn.Module, step_fn: OptimizerStep, state: dict[str, Any]) -> dict[str, int]:
    """Load optimizer, schedule and scaler (every rank, same ``state``); return the data position."""
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(unwrap(model), step_fn.optimizer, optim_state_dict=state["optimizer"], options=options)
    step_fn.load_state_dict(state["step"])
    return dict(state["position"])


def step_seed(seed: int, rank: int, step: int) -> int:
    """The RNG seed of one rank's step: a resumed step draws the same dropout masks as the original."""
    return (seed * 1_000_003 + rank * 10_007 + step) % (2**63)
