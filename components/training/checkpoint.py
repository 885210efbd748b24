"""Checkpoints: safetensors weights plus a JSON config, never pickled code.

A checkpoint folder holds ``model.safetensors``, ``config.json`` (format
version, task name, the task's config, training position) and any extra
files the task needs to rebuild itself (a tokenizer, say).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from components.errors import TvpError
from components.training.checkpoint_migration import CHECKPOINT_FORMAT_VERSION, migrate_weights

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class CheckpointError(TvpError, ValueError):
    pass


def save_checkpoint_state(
    path: str | Path,
    weights: dict[str, torch.Tensor],
    task: str,
    task_config: dict[str, Any],
    files: dict[str, str] | None = None,
    position: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder from a full (unsharded) state dict."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    save_file(state, str(out / WEIGHTS_FILE))
    for name, text in (files or {}).items():
        (out / name).write_text(text)
    config = {
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "task": task,
        "task_config": task_config,
        "files": sorted(files or {}),
        "position": position or {},
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as written (its ``format_version`` is the writer's, maybe older)."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{path} is not a checkpoint: it has no {CONFIG_FILE}")
    config = json.loads(config_path.read_text())
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"checkpoint {path} has no valid format version ({version!r})")
    if version > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {version}, newer than this tvp reads "
                              f"(up to {CHECKPOINT_FORMAT_VERSION}): upgrade tvp to load it")
    return config


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under this code's parameter names (older formats migrated)."""
    config = read_checkpoint_config(path)
    state: dict[str, torch.Tensor] = load_file(str(Path(path) / WEIGHTS_FILE))
    return migrate_weights(state, config["task"], config["format_version"])


def load_weights(path: str | Path, model: nn.Module) -> None:
    """Load ``model.safetensors`` into ``model`` (older formats migrated); every key must match."""
    model.load_state_dict(read_weights(path), strict=True)


def copy_model_files(src: str | Path, dst: str | Path) -> Path:
    """Copy what inference and fine-tuning need (weights, config, task files), leaving training state behind."""
    config = read_checkpoint_config(src)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    for name in [WEIGHTS_FILE, CONFIG_FILE, *config["files"]]:
        shutil.copyfile(Path(src) / name, out / name)
    return out
