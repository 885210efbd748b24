"""The loop's optimizer step, precision, parameter groups, schedules and data parallelism, in plain torch.

Distributed checks run two gloo processes on loopback with torch.distributed
directly: no Ray Train start-up is needed to test the arithmetic.
"""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from components.models.clip import CLIP
from components.models.transformer import Block
from components.training.optimizers import param_groups
from components.training.parallel import full_state_dict, wrap_model
from components.training.schedules import build_scheduler, lr_factor
from components.training.train_step import OptimizerStep
from tests.components.test_transformer_blocks import tiny_clip_config


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.block = Block(8, heads=2)
        self.head = nn.Linear(8, 1)

    def forward(self, x):  # (B, T, 4) -> (B,)
        return self.head(self.block(self.embed(x))).mean(dim=(1, 2))


def mse_loss(model, batch):
    loss = (model(batch["x"]) - batch["y"]).pow(2).mean()
    return loss, {"loss": loss.item()}


def data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, 4, generator=g), "y": torch.randn(n, generator=g)}


def make_step(model, precision="fp32", clip=None, lr=0.1, optimizer="sgd"):
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        opt = torch.optim.AdamW(param_groups(model, lr, 0.01), lr=lr)
    return OptimizerStep(model, mse_loss, opt, build_scheduler(opt, 10, schedule="constant"), precision, clip)


def split(batch, parts):
    return [{k: v.chunk(parts)[i] for k, v in batch.items()} for i in range(parts)]


def test_accumulated_micro_batches_equal_one_big_batch():
    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    batch = data()
    make_step(a)([batch])
    make_step(b)(split(batch, 2))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_clipping_bounds_the_update_and_reports_the_raw_norm():
    torch.manual_seed(0)
    model = TinyNet()
    before = [p.detach().clone() for p in model.parameters()]
    batch = {"x": data()["x"], "y": torch.full((8,), 1000.0)}  # a huge loss
    metrics = make_step(model, clip=0.5, lr=1.0)([batch])
    assert metrics["grad_norm"] > 0.5
    update = math.sqrt(sum((p.detach() - q).pow(2).sum().item() for p, q in zip(model.parameters(), before)))
    assert update == pytest.approx(0.5, rel=1e-4)  # SGD with lr 1 moves by exactly the clipped gradient


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_run_and_learn_on_cpu(precision):
    torch.manual_seed(0)
    model = TinyNet()
    step = make_step(model, precision=precision, lr=0.01, optimizer="adamw")
    batch = data(32)
    losses = [step([batch])["loss"] for _ in range(30)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert step.scaler.is_enabled() == (precision == "fp16")
    fresh = make_step(TinyNet(), precision=precision)
    fresh.load_state_dict(step.state_dict())
    assert fresh.scaler.get_scale() == step.scaler.get_scale()


def test_parameter_groups_spare_norms_biases_and_scalars_and_set_backbone_rate():
    model = CLIP(tiny_clip_config())
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.1, backbone_lr=1e-4,
                                                 backbone_prefixes=("visual.",))}
    names = {id(p): n for n, p in model.named_parameters()}
    named = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert "logit_scale" in named["main_no_decay"] and "text.ln_final.weight" in named["main_no_decay"]
    assert "visual.patch_embed.proj.weight" in named["backbone_decay"]
    assert "visual.ln_post.bias" in named["backbone_no_decay"]
    assert "text_proj.weight" in named["main_decay"]
    assert groups["backbone_decay"]["lr"] == 1e-4 and groups["main_decay"]["lr"] == 1e-3
    assert groups["main_no_decay"]["weight_decay"] == 0.0 and groups["main_decay"]["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_schedules():
    assert [lr_factor(s, 10, warmup_steps=2) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(6, 10, warmup_steps=2) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(10, 10, warmup_steps=2) == pytest.approx(0.0)
    assert [lr_factor(s, 100, schedule="step", step_every=3, step_gamma=0.5) for s in (0, 2, 3, 7)] == [1, 1, 0.5, 0.25]
    assert lr_factor(50, 100, warmup_steps=5, schedule="constant") == 1.0


def _distributed_worker(rank, world, init_file, strategy, out_path):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = wrap_model(TinyNet(), strategy, torch.device("cpu"))
    # SGD, not Adam: Adam turns the near-zero gradient of the key bias into full-size steps whose
    # sign depends on summation order, which would make equal arithmetic look unequal.
    step = make_step(model, lr=0.05)
    for i in range(3):
        full = data(8, seed=10 + i)
        mine = split(full, world)[rank]
        step(split(mine, 2))  # two micro-batches per worker
    weights = full_state_dict(model)
    if rank == 0:
        save_file({k: v.contiguous() for k, v in weights.items()}, out_path)
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_data_parallel_training_matches_one_process(strategy, tmp_path):
    out = str(tmp_path / "weights.safetensors")
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), strategy, out), nprocs=2)
    torch.manual_seed(0)
    reference = TinyNet()
    step = make_step(reference, lr=0.05)
    for i in range(3):
        step([data(8, seed=10 + i)])
    trained = load_file(out)
    assert trained.keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(trained[name], value, atol=1e-5, rtol=1e-4, msg=name)
