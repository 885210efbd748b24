"""The task interface: how a model plugs into the one training loop.

A task knows how to build its model, turn a decoded shard batch into model
input (a pure numpy function that Ray Data runs in parallel), turn a batch
into a loss and metrics, and evaluate a model on raw shard samples. The
loop, checkpoints and tracking know nothing else about the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from pydantic import TypeAdapter
from torch import nn


class Task(ABC):
    name: ClassVar[str]
    config_type: ClassVar[type]
    columns: ClassVar[list[str]]  # shard members that transform_batch reads
    backbone_prefixes: ClassVar[tuple[str, ...]] = ()  # parameter names that TrainConfig.backbone_lr applies to

    def __init__(self, config: Any, files: dict[str, str] | None = None):
        self.config = config
        self.files = dict(files or {})

    @classmethod
    def from_dict(cls, config: dict[str, Any], files: dict[str, str] | None = None) -> "Task":
        return cls(TypeAdapter(cls.config_type).validate_python(config), files)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def transform_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Decoded shard columns in, model input columns out (numeric arrays only)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Text tokens in a batch, for tokens/s; 0 for tasks without text."""
        return 0

    @abstractmethod
    def evaluate(self, model: nn.Module, samples: Iterable[dict[str, Any]]) -> dict[str, float]:
        """Metrics of ``model`` on raw webdataset samples (member name → bytes)."""

    def predict(self, model: nn.Module, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Inference for the registered model's pyfunc flavour: one output record per input record."""
        raise NotImplementedError(f"task {self.name} has no inference output yet")
