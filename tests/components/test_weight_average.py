"""The weight EMA and layer-wise rate decay: their arithmetic, and an EMA run that resumes exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from components.tasks.registry import register_task
from components.training.checkpoint import read_weights
from components.training.harness import train_in_process
from components.training.optimizers import layer_rate_scales, param_groups
from components.training.weight_average import WeightEMA
from tests.tasks.toy_task import write_toy_shards

register_task("toy", "tests.tasks.toy_task:ToyTask")


def test_the_average_follows_the_warmed_up_decay_and_applied_swaps_back():
    model = nn.Linear(3, 2)
    ema = WeightEMA(model, decay=0.99)
    start = model.weight.detach().clone()
    expected = start.clone()
    for n in range(5):
        with torch.no_grad():
            model.weight.add_(1.0)
        decay = min(0.99, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * model.weight.detach()
        ema.update()
    assert ema.updates == 5
    live = model.weight.detach().clone()
    with ema.applied():
        assert torch.allclose(model.weight, expected, atol=1e-6)
    assert torch.equal(model.weight, live)  # the live weights are back, untouched


def test_layer_rates_decay_from_the_top_layer_down_and_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].bias.requires_grad_(False)
    scales = layer_rate_scales({"0.weight": 0, "0.bias": 0, "1.weight": 1, "1.bias": 1, "2.weight": 2,
                                "2.bias": 2}, 0.5)
    groups = param_groups(model, lr=1.0, weight_decay=0.1, rate_scales=scales)
    rates = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert rates[id(model[2].weight)] == 1.0 and rates[id(model[1].bias)] == 0.5
    assert rates[id(model[0].weight)] == 0.25 and id(model[0].bias) not in rates
    assert groups[0]["lr"] == 1.0  # the first group, whose rate is logged, is the top layer's
    assert [g["weight_decay"] for g in groups if any(p is model[2].weight for p in g["params"])] == [0.1]


def _spec(train_dir: str, **train) -> dict:
    return {"task": "toy", "task_config": {"hidden": 8}, "files": {}, "sources": [[train_dir, 1.0]],
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.05, "shuffle_buffer": 0, "loader_workers": 0,
                      "weight_decay": 0.0, "preemption_check_every_steps": 0, **train}}


def test_an_ema_run_checkpoints_the_average_and_resumes_exactly(tmp_path):
    train_dir = write_toy_shards(tmp_path / "train", 2, 32, seed=0)
    whole = train_in_process(_spec(train_dir, ema_decay=0.9), tmp_path / "whole")
    first = train_in_process(_spec(train_dir, ema_decay=0.9), tmp_path / "split", stop_after_steps=3)
    assert first.stopped
    second = train_in_process(_spec(train_dir, ema_decay=0.9), tmp_path / "split")
    assert second.resumed
    for key, value in whole.model.state_dict().items():  # the live weights continued exactly...
        assert torch.allclose(value, second.model.state_dict()[key], atol=1e-6), key
    saved = {name: read_weights(sorted((tmp_path / name).glob("checkpoint_*"))[-1]) for name in ("whole", "split")}
    for key, value in saved["whole"].items():  # ...and so did the average, which is what checkpoints hold
        assert torch.allclose(value, saved["split"][key], atol=1e-6), key
    live = whole.model.state_dict()
    assert any(not torch.allclose(value, live[key], atol=1e-4) for key, value in saved["whole"].items())


def test_layer_decay_needs_a_task_with_layers(tmp_path):
    train_dir = write_toy_shards(tmp_path / "train", 1, 16, seed=0)
    with pytest.raises(ValueError, match="layer_decay needs a model with layers"):
        train_in_process(_spec(train_dir, layer_decay=0.7), tmp_path / "run")
