"""Tasks by name, and rebuilding a task and its model from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from components.training.checkpoint import load_weights, read_checkpoint_config
from components.tasks.clip import ClipTask
from components.tasks.task import Task

TASKS: dict[str, type[Task]] = {ClipTask.name: ClipTask}


def build_task(name: str, config: dict[str, Any], files: dict[str, str] | None = None) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name].from_dict(config, files)


def load_task_and_model(path: str | Path) -> tuple[Task, nn.Module]:
    """The task and its model with the checkpoint's weights, in eval mode."""
    config = read_checkpoint_config(path)
    files = {name: (Path(path) / name).read_text() for name in config["files"]}
    task = build_task(config["task"], config["task_config"], files)
    model = task.build_model()
    load_weights(path, model)
    return task, model.eval()
