"""Bad training inputs fail with one clear line before anything starts."""

from __future__ import annotations


import pytest

from components.tasks.registry import register_task
from components.training.checkpoint import CheckpointError, save_checkpoint_state
from pipelines.config import ConfigError
from pipelines.finetune import resolve_parent
from pipelines.run_config import load_run_config
from pipelines.training_run import run_training
from tests.tasks.toy_task import ToyConfig, ToyTask

register_task("toy", "tests.tasks.toy_task:ToyTask")


def test_an_evaluation_metric_to_rank_checkpoints_needs_evaluation_data(tmp_path):
    cfg = load_run_config("clip", "clip-tiny", ["train.checkpoint_metric=zero_shot_top1"])
    with pytest.raises(ConfigError, match="is an evaluation metric: give evaluation data"):
        run_training("clip", cfg, [], None, tmp_path, "r", "sqlite:///unused.db")
    assert not list(tmp_path.iterdir())


def test_finetuning_refuses_a_checkpoint_of_another_task_or_no_checkpoint(tmp_path):
    task = ToyTask(ToyConfig())
    save_checkpoint_state(tmp_path / "toy", task.build_model().state_dict(), "toy", task.config_dict())
    parent = resolve_parent(str(tmp_path / "toy"), "toy", "sqlite:///unused.db", tmp_path)
    assert parent.task == "toy" and parent.registered_model is None
    assert parent.tags["tvp.parent_model"] == str((tmp_path / "toy").resolve())
    with pytest.raises(CheckpointError, match="is a toy checkpoint, not clip"):
        resolve_parent(str(tmp_path / "toy"), "clip", "sqlite:///unused.db", tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_parent(str(tmp_path / "nowhere"), "clip", "sqlite:///unused.db", tmp_path)
