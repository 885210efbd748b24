"""Resumable training state: a run stopped and restored continues exactly as an uninterrupted one."""

import torch

from components.training.optimizers import build_adamw
from components.training.schedules import build_scheduler
from components.training.train_state import (
    TRAIN_STATE_FILE,
    capture_train_state,
    load_train_state,
    restore_train_state,
    save_train_state,
)
from components.training.train_step import OptimizerStep
from tests.components.test_train_step import TinyNet, data, mse_loss


def fresh(precision="fp16"):
    torch.manual_seed(0)
    model = TinyNet()
    opt = build_adamw(model, 0.01, 0.1)
    return model, OptimizerStep(model, mse_loss, opt, build_scheduler(opt, 6, warmup_steps=2), precision)


def test_resumed_training_matches_uninterrupted_training(tmp_path):
    model, step = fresh()
    for i in range(3):
        step([data(8, seed=i)])
    save_train_state(tmp_path, capture_train_state(model, step, {"epoch": 1, "epoch_step": 3, "step": 3}))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(3, 6):
        step([data(8, seed=i)])

    resumed_model, resumed_step = fresh()
    resumed_model.load_state_dict(weights)
    position = restore_train_state(resumed_model, resumed_step, load_train_state(tmp_path))
    assert position == {"epoch": 1, "epoch_step": 3, "step": 3}
    for i in range(3, 6):
        resumed_step([data(8, seed=i)])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, msg=name)
    assert resumed_step.scheduler.get_last_lr() == step.scheduler.get_last_lr()


def test_train_state_loads_with_weights_only_and_is_optional(tmp_path):
    model, step = fresh()
    step([data(8)])
    save_train_state(tmp_path, capture_train_state(model, step, {"epoch": 1, "epoch_step": 1, "step": 1}))
    state = torch.load(tmp_path / TRAIN_STATE_FILE, weights_only=True)  # no code, only tensors and containers
    assert set(state) == {"optimizer", "step", "position"}
    assert load_train_state(tmp_path / "elsewhere") is None
