"""The ViT task on the embedded digits through the in-process harness: a short run learns and evaluates,
an augmented run resumes exactly, fine-tuning fits a new head, resolution and frozen backbone, and the
pictures, layer-wise rates and timm layout hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from components.data.shards.shard_set import ShardSet
from components.evaluation.batch_evaluation import evaluate, sample_batches
from components.evaluation.eval_facts import eval_facts
from components.tasks.task import EvalFacts
from components.tasks.vit import VitTask
from components.training.checkpoint import CheckpointError
from components.training.harness import train_in_process
from components.training.optimizers import layer_rate_scales, param_groups

SMALL = {"image_size": 32, "patch_size": 8, "width": 48, "layers": 2, "heads": 3, "eps": 1e-6}
DIGITS_AUGMENT = {"scale": [0.7, 1.0], "hflip": 0.0, "randaugment_ops": 2, "randaugment_magnitude": 5,
                  "mixup_alpha": 0.2, "cutmix_alpha": 0.2, "eval_crop_pct": 1.0, "fill": [0, 0, 0]}


def _classes(location) -> list[str]:
    classes = EvalFacts.from_manifest(eval_facts(str(location))).classes
    return [classes[i] for i in range(len(classes))]


def _spec(digits, task_config: dict, eval_set: bool = True, **train) -> dict:
    spec = {"task": "vit", "task_config": task_config, "files": {},
            "sources": [[str(digits / "train"), 1.0]],
            "train": {"epochs": 2, "batch_size": 32, "lr": 2e-3, "warmup_steps": 10, "loader_workers": 0,
                      "shuffle_buffer": 2000, "preemption_check_every_steps": 0, "system_metrics_every_s": 0,
                      "weight_decay": 0.05, **train}}
    if eval_set:
        spec["eval"] = {"location": str(digits / "heldout"), "facts": eval_facts(str(digits / "heldout"))}
    return spec


@pytest.fixture(scope="module")
def pretrained(digit_images, tmp_path_factory):
    """A small ViT trained for 8 epochs on the digits (crops and RandAugment; mixing, which slows a short
    run down, is left to the resume test)."""
    augment = {**DIGITS_AUGMENT, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}
    config = {"model": SMALL, "labels": _classes(digit_images / "train"), "augment": augment}
    return train_in_process(_spec(digit_images, config, epochs=8, lr=3e-3), tmp_path_factory.mktemp("vit") / "run")


def test_a_short_run_learns_and_reports_top1_and_top5_on_held_out_digits(pretrained, digit_images):
    run = pretrained
    epochs = [r for r in run.reports if r["trigger"] == "epoch"]
    assert [r["num_eval_samples"] for r in epochs] == [359] * 8
    assert epochs[-1]["top1"] > 0.5 > 0.1  # 10 classes: chance is 0.1
    assert epochs[-1]["top5"] >= epochs[-1]["top1"] and epochs[-1]["train_loss"] < epochs[0]["train_loss"]

    # The same evaluation outside the loop, in other batch sizes, agrees with what the loop reported.
    task = run.loop.task
    samples = list(ShardSet.open(str(digit_images / "heldout")).iter_samples(task.eval_columns))
    facts = EvalFacts.from_manifest(eval_facts(str(digit_images / "heldout")))
    again = evaluate(task, run.model.eval(), sample_batches(task, samples, 100), facts)
    assert again["top1"] == pytest.approx(epochs[-1]["top1"])


def test_pictures_show_the_confusion_matrix_and_attention_rollout(pretrained, digit_images):
    run = pretrained
    task, model = run.loop.task, run.model.eval()
    facts = EvalFacts.from_manifest(eval_facts(str(digit_images / "heldout")))
    samples = list(ShardSet.open(str(digit_images / "heldout")).iter_samples(task.eval_columns))[:8]
    rollout = task.visualize(model, samples, facts)["attention_rollout"]
    assert rollout.size[0] > 300 and rollout.getextrema() != ((255, 255),) * 3
    outputs = {"label": np.array([0, 1, 1, 2]), "predicted": np.array([0, 1, 2, 2])}
    matrix = task.eval_pictures(outputs, facts)["confusion_matrix"]
    assert matrix.size[0] >= 640 and matrix.mode == "RGB"


def test_an_augmented_mixed_run_stopped_and_resumed_ends_with_the_same_weights(digit_images, tmp_path):
    config = {"model": SMALL, "labels": _classes(digit_images / "train"), "augment": DIGITS_AUGMENT}
    spec = _spec(digit_images, config, eval_set=False, samples_per_epoch=192, ema_decay=0.9)
    whole = train_in_process(spec, tmp_path / "whole")
    assert train_in_process(spec, tmp_path / "split", stop_after_steps=7).stopped
    resumed = train_in_process(spec, tmp_path / "split")
    assert resumed.resumed
    for key, value in whole.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6), key


def test_fine_tuning_fits_a_new_head_and_resolution_and_a_frozen_backbone_stays_put(pretrained, digit_images,
                                                                                     tmp_path):
    run = pretrained
    parent = {k: v.clone() for k, v in run.model.state_dict().items()}
    # Another label set: the digits' names in another order (as another tree would number them), at 48 pixels.
    labels = _classes(digit_images / "train")
    child = VitTask.from_dict({"model": {**SMALL, "image_size": 48}, "labels": labels[::-1],
                               "freeze_backbone": True})
    adapted = child.adapt_weights(parent, child.build_model())
    assert adapted["pos_embed"].shape == (1, 37, 48) and adapted["encoder.layers.0.attn.qkv.weight"].equal(
        parent["encoder.layers.0.attn.qkv.weight"])

    # The held-out set numbers its classes by the training tree; the classifier maps them by name.
    with pytest.raises(CheckpointError, match="task.labels differ"):
        child.fit_to_data(lambda: EvalFacts.from_manifest(eval_facts(str(digit_images / "train"))))
    task_config = {"model": {**SMALL, "image_size": 48}, "labels": labels, "freeze_backbone": True,
                   "augment": DIGITS_AUGMENT}
    spec = {**_spec(digit_images, task_config, epochs=1, samples_per_epoch=256, lr=1e-2),
            "init_weights": safetensors_bytes(parent)}
    tuned = train_in_process(spec, tmp_path / "tuned")
    weights = tuned.model.state_dict()
    assert weights["encoder.layers.1.mlp.fc1.weight"].equal(parent["encoder.layers.1.mlp.fc1.weight"])
    assert not weights["head.weight"].equal(parent["head.weight"])
    assert tuned.reports[-1]["top1"] > 0.3  # the pretrained features carry over at the new resolution


def test_layer_decay_gives_each_block_its_rate():
    task = VitTask.from_dict({"model": SMALL, "labels": ["a", "b"]})
    model = task.build_model()
    groups = param_groups(model, lr=1.0, weight_decay=0.0, rate_scales=layer_rate_scales(task.layer_ids(model), 0.5))
    rate = {name: g["lr"] for g in groups for name, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert rate["head.weight"] == 1.0 and rate["encoder.layers.1.mlp.fc1.weight"] == 0.5
    assert rate["encoder.layers.0.ln_1.weight"] == 0.25 and rate["pos_embed"] == 0.125


def test_timm_layout_out_and_back_in(pretrained, tmp_path):
    import timm

    run = pretrained
    task = run.loop.task
    folder = task.export_pretrained(run.model.state_dict(), tmp_path / "timm")
    reference = timm.create_model("local-dir:" + str(folder), pretrained=True).eval()
    images = torch.randn(2, 3, 32, 32)
    assert torch.allclose(reference(images), run.model.eval()(images), atol=1e-5)
    config, files, weights = VitTask.import_pretrained(folder)
    assert config["labels"] == task.config.labels and config["augment"]["eval_crop_pct"] == 1.0
    assert all(torch.equal(weights[k], v) for k, v in run.model.state_dict().items())
