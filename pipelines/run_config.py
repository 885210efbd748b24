"""The one config schema of training pipelines: ``task`` (the task's own settings), ``train``, ``tracking``.

``task`` is validated by the named task's own config type (a plain
dataclass beside the model), so an unknown or mistyped key names itself as
``task.model.vision.width``; ``train`` is the shared loop's ``TrainConfig``.
Presets are named per model (``clip-tiny``, ``clip-finetune``); ``tiny`` is
the demo's and adds a ``data`` section, which training commands ignore.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from components.tasks.registry import task_class
from components.training.train_config import TrainConfig
from pipelines.config import PRESETS_DIR, ConfigError, _describe, load_config


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrackingConfig(Strict):
    experiment: str = "tvp"  # the MLflow experiment of the run
    registered_model: str | None = None  # the registered model versions go to; None: tvp-<task>


class RunConfig(Strict):
    task: dict[str, Any] = Field(default_factory=dict)  # validated by the task's own config type
    train: TrainConfig = Field(default_factory=TrainConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def task_config(self, task_name: str) -> Any:
        """The ``task`` section as the task's own config (a dataclass); errors name the dotted key."""
        try:
            return TypeAdapter(task_class(task_name).config_type).validate_python(self.task)
        except ValidationError as exc:
            error = exc.errors()[0]
            raise ConfigError(_describe({**error, "loc": ("task", *error["loc"])})) from None

    def registered_model(self, task_name: str) -> str:
        return self.tracking.registered_model or f"tvp-{task_name}"


def default_preset(task_name: str, purpose: str = "tiny") -> str | None:
    """``<task>-<purpose>`` when such a preset ships (``clip-tiny``, ``clip-finetune``), else None."""
    name = f"{task_name}-{purpose}"
    return name if (PRESETS_DIR / f"{name}.yaml").is_file() else None


def load_run_config(task_name: str, preset: str | Path | None, overrides: list[str] | None = None,
                    model: type[RunConfig] = RunConfig, base_task: dict[str, Any] | None = None) -> RunConfig:
    """A validated run config for ``task_name``; ``base_task`` (a parent checkpoint's task config) is what the
    preset's and the overrides' ``task`` keys are laid over."""
    cfg = load_config(model, preset, overrides, ignore_sections=("data",) if model is RunConfig else (),
                      base={"task": base_task} if base_task else None)
    cfg.task_config(task_name)  # fail now, naming the key, before anything heavy starts
    return cfg
