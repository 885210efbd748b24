"""The ViT task's supervised contrastive objective: two seeded views per image, a projection head, the
classifier as an online probe that leaves the encoder alone, and a short run on the embedded digits whose
loss falls."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from components.data.loading.rank_reader import SampleRngs
from components.tasks.vit import SupConViT, VitTask
from components.training.harness import train_in_process

SMALL = {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "heads": 3, "eps": 1e-6}
AUGMENT = {"scale": [0.5, 1.0], "hflip": 0.0, "randaugment_ops": 2, "randaugment_magnitude": 5,
           "eval_crop_pct": 1.0, "fill": [0, 0, 0]}


def _supcon_task(**config) -> VitTask:
    return VitTask.from_dict({"model": SMALL, "labels": ["a", "b", "c"], "augment": AUGMENT,
                              "objective": "supcon", "projection_dim": 16, **config})


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_two_views_per_image_each_drawn_from_the_samples_own_generator():
    task = _supcon_task()
    batch = {"jpg": np.array([_png(0), _png(1)], dtype=object), "cls": np.array([b"0", b"2"], dtype=object)}
    out = task.transform_batch(batch, SampleRngs(seed=5, epoch=0, ids=np.array([10, 11])))
    assert out["views"].shape == (2, 2, 3, 32, 32) and out["label"].tolist() == [0, 2]
    assert not np.array_equal(out["views"][:, 0], out["views"][:, 1])  # two different draws
    # The same samples in another batch, in another order, get the same two views: a resume replays them.
    alone = task.transform_batch({k: v[::-1] for k, v in batch.items()},
                                 SampleRngs(seed=5, epoch=0, ids=np.array([11, 10])))
    assert np.array_equal(alone["views"][::-1], out["views"])


def test_the_probe_head_learns_without_moving_the_encoder_and_the_projection_stays_out_of_classifiers():
    task = _supcon_task()
    model = task.build_model()
    assert isinstance(model, SupConViT) and model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    projections, probe_logits = model(torch.randn(4, 3, 32, 32), contrastive=True)
    assert projections.shape == (4, 16)
    F.cross_entropy(probe_logits, torch.tensor([0, 1, 2, 0])).backward()
    assert model.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for name, p in model.named_parameters() if not name.startswith("head."))

    # A classifier fine-tuned from SupCon weights drops the projection; a SupCon model from a classifier's
    # weights starts its projection fresh.
    classifier_task = VitTask.from_dict({"model": SMALL, "labels": ["a", "b", "c"]})
    classifier = classifier_task.build_model()
    adapted = classifier_task.adapt_weights(model.state_dict(), classifier)
    assert not any(k.startswith("projection.") for k in adapted)
    assert task.adapt_weights(classifier.state_dict(), model)["projection.0.weight"].shape == (48, 48)
    with pytest.raises(ValueError, match="freeze_backbone"):
        _supcon_task(freeze_backbone=True)


def test_a_supcon_vit_trains_a_few_steps_on_the_digits_and_its_loss_falls(digit_images, tmp_path):
    from components.evaluation.eval_facts import eval_facts
    from components.tasks.task import EvalFacts

    classes = EvalFacts.from_manifest(eval_facts(str(digit_images / "train"))).classes
    # Crops alone: under RandAugment a tiny ViT's projections of digits stay nearly parallel for dozens of
    # steps (the loss sits at its chance value, log 63 + the probe's log 10), too long for a unit test.
    augment = {**AUGMENT, "randaugment_ops": 0}
    config = {"model": SMALL, "labels": [classes[i] for i in range(len(classes))], "augment": augment,
              "objective": "supcon", "projection_dim": 32}
    spec = {"task": "vit", "task_config": config, "files": {}, "sources": [[str(digit_images / "train"), 1.0]],
            "train": {"epochs": 3, "samples_per_epoch": 192, "batch_size": 32, "lr": 1e-3, "warmup_steps": 3,
                      "loader_workers": 0, "shuffle_buffer": 500, "preemption_check_every_steps": 0,
                      "system_metrics_every_s": 0, "weight_decay": 0.05}}
    run = train_in_process(spec, tmp_path / "run")
    losses = [r["train_loss"] for r in run.reports if r["trigger"] == "epoch"]  # SupCon + probe, epoch means
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0] and losses[2] < losses[0] - 0.05
    assert isinstance(run.model, SupConViT)
