"""Checkpoints written by earlier tvp keep loading: parameter names migrate by the checkpoint's format version."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

from components.tasks.registry import load_task_and_model
from components.training.checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    CheckpointError,
    read_checkpoint_config,
    read_weights,
)
from components.training.checkpoint_migration import MIGRATIONS, migrate_optimizer_state
from pipelines.finetune import resolve_parent

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "clip_checkpoint_v1"


def test_the_fixture_is_a_version_1_checkpoint_with_the_old_names():
    assert read_checkpoint_config(FIXTURE / "checkpoint")["format_version"] == 1
    names = load_file(str(FIXTURE / "checkpoint" / "model.safetensors"))
    assert "visual.transformer.blocks.1.attn.qkv.weight" in names and "text.transformer.blocks.0.mlp.fc2.bias" in names


def test_a_version_1_clip_checkpoint_loads_and_gives_its_recorded_outputs():
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    task, model = load_task_and_model(FIXTURE / "checkpoint")
    captions = json.loads((FIXTURE / "captions.json").read_text())
    tokens = torch.from_numpy(task.tokenize(captions))
    assert torch.equal(tokens, expected["tokens"])  # the tokenizer travelled with it
    with torch.no_grad():
        image_emb, text_emb, scale = model(expected["images"], tokens)
    torch.testing.assert_close(image_emb, expected["image_embeddings"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(text_emb, expected["text_embeddings"], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(scale.reshape(1), expected["logit_scale"])
    assert "visual.encoder.layers.1.attn.qkv.weight" in model.state_dict()


def test_fine_tuning_from_a_version_1_checkpoint_gets_migrated_weights(tmp_path):
    parent = resolve_parent(str(FIXTURE / "checkpoint"), "clip", "unused://", tmp_path)
    task, model = load_task_and_model(FIXTURE / "checkpoint")
    weights = load_safetensors(parent.weights)
    model.load_state_dict(task.adapt_weights(weights, model), strict=True)
    torch.testing.assert_close(weights["text.encoder.layers.0.attn.proj.weight"],
                               read_weights(FIXTURE / "checkpoint")["text.encoder.layers.0.attn.proj.weight"])


def test_a_checkpoint_from_a_newer_format_is_refused_in_one_line(tmp_path):
    folder = shutil.copytree(FIXTURE / "checkpoint", tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = CHECKPOINT_FORMAT_VERSION + 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"newer than this tvp reads") as error:
        load_task_and_model(folder)
    assert "\n" not in str(error.value) and f"format version {CHECKPOINT_FORMAT_VERSION + 1}" in str(error.value)


def test_every_older_version_has_its_migration_step():
    assert sorted(MIGRATIONS) == list(range(1, CHECKPOINT_FORMAT_VERSION))


def test_resumed_optimizer_state_of_a_version_1_checkpoint_is_renamed():
    task, model = load_task_and_model(FIXTURE / "checkpoint")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum(t.sum() for t in model(torch.zeros(1, 3, 16, 16), torch.tensor([[1, 5, 2, 0, 0, 0, 0, 0]]))).backward()
    optimizer.step()
    options = StateDictOptions(full_state_dict=True)
    state = get_optimizer_state_dict(model, optimizer, options=options)

    def old(name: str) -> str:
        return name.replace("encoder.layers.", "transformer.blocks.")

    written = {"state": {old(k): v for k, v in state["state"].items()},
               "param_groups": [{**g, "params": [old(p) for p in g["params"]]} for g in state["param_groups"]]}
    assert "visual.transformer.blocks.0.attn.qkv.weight" in written["state"]
    migrated = migrate_optimizer_state(written, "clip", 1)
    assert [g["params"] for g in migrated["param_groups"]] == [g["params"] for g in state["param_groups"]]
    torch.testing.assert_close(migrated["state"], state["state"])
