"""Tasks by name, imported only when named; rebuilding a task and its model from a checkpoint.

Adding a model family is one line here. A task's module (its model, its
tokenizer, its evaluation) is imported the first time its name is asked for,
so naming one task never pays for the others.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from components.tasks.task import Task

# name → "module:Class"
TASKS: dict[str, str] = {
    "bert": "components.tasks.bert:BertTask",
    "clip": "components.tasks.clip:ClipTask",
    "detr": "components.tasks.detr:DetrTask",
    "vit": "components.tasks.vit:VitTask",
}


class UnknownTask(ValueError):
    pass


def task_names() -> list[str]:
    return sorted(TASKS)


def register_task(name: str, target: str) -> None:
    """Make ``module:Class`` available as ``name`` (tests register toy tasks this way)."""
    TASKS[name] = target


def task_class(name: str) -> type["Task"]:
    if name not in TASKS:
        raise UnknownTask(f"unknown task {name!r}; known: {', '.join(task_names())}")
    module, _, cls = TASKS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_task(name: str, config: dict[str, Any], files: dict[str, str] | None = None) -> "Task":
    return task_class(name).from_dict(config, files)


def load_task_and_model(path: str | Path) -> tuple["Task", "nn.Module"]:
    """The task and its model with the checkpoint's weights, in eval mode."""
    from components.training.checkpoint import load_weights, read_checkpoint_config

    config = read_checkpoint_config(path)
    files = {name: (Path(path) / name).read_text() for name in config["files"]}
    task = build_task(config["task"], config["task_config"], files)
    model = task.build_model()
    load_weights(path, model)
    return task, model.eval()
