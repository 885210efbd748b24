"""The DETR task through the in-process harness on the embedded digit scenes: a few scenes are learnt (AP50 ≥ 0.9
on them), evaluation equals
itself in any batch split, fine-tuning onto new categories keeps everything but the class head, and
predictions come back in the input picture's pixels."""

from __future__ import annotations

import io
from itertools import islice

import numpy as np
import pytest
import torch
from PIL import Image

from components.data.shards.shard_set import ShardSet
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import finalize_shard_set, write_shard
from components.evaluation.batch_evaluation import evaluate, sample_batches
from components.evaluation.eval_facts import eval_facts
from components.tasks.detr import DetrTask
from components.tasks.task import EvalFacts
from components.training.harness import train_in_process
from pipelines.run_config import load_run_config


def _few_scenes(digit_scenes, out, count: int) -> str:
    """The first ``count`` training scenes as a shard set of their own (two shards), with the same classes."""
    samples = list(islice(ShardSet.open(str(digit_scenes / "train")).iter_samples(["jpg", "json"]), count))
    ShardStore(out).makedirs()
    half = count // 2
    write_shard(out, 0, samples[:half], {"count": half})
    write_shard(out, 1, samples[half:], {"count": count - half})
    manifest = eval_facts(str(digit_scenes / "train"))
    finalize_shard_set(out, {"kind": "few scenes"}, {}, extra={"classes": manifest["classes"]})
    return str(out)


@pytest.fixture(scope="module")
def overfit(digit_scenes, tmp_path_factory):
    """detr-tiny trained on 8 scenes for 700 steps (cosine from 5e-4), evaluated on the same 8."""
    root = tmp_path_factory.mktemp("detr")
    few = _few_scenes(digit_scenes, root / "few", 8)
    cfg = load_run_config("detr", "detr-tiny", [])
    task = DetrTask(cfg.task_config("detr")).fit_to_data(lambda: EvalFacts.from_manifest(eval_facts(few)))
    spec = {"task": "detr", "task_config": task.config_dict(), "files": {}, "sources": [[few, 1.0]],
            "train": {**cfg.train.__dict__, "epochs": 35, "samples_per_epoch": 80, "batch_size": 4, "lr": 5e-4,
                      "schedule": "cosine", "loader_workers": 0, "shuffle_buffer": 0,
                      "preemption_check_every_steps": 0, "system_metrics_every_s": 0},
            "eval": {"location": few, "facts": eval_facts(few)}}
    return train_in_process(spec, root / "run"), few


def test_a_few_scenes_are_learnt(overfit):
    run, _ = overfit
    final = run.reports[-1]
    assert final["num_eval_images"] == 8
    assert final["AP50"] >= 0.9, final


def test_evaluation_does_not_depend_on_the_batch_split(overfit):
    run, few = overfit
    task, model = run.loop.task, run.model.eval()
    samples = list(ShardSet.open(few).iter_samples(task.eval_columns))
    facts = EvalFacts.from_manifest(eval_facts(few))
    whole = evaluate(task, model, sample_batches(task, samples, 8), facts)
    split = evaluate(task, model, sample_batches(task, samples, 3), facts)
    assert whole["AP50"] == pytest.approx(split["AP50"]) and whole["AP"] == pytest.approx(split["AP"])


def test_fine_tuning_onto_new_categories_keeps_all_but_the_class_head(overfit):
    run, _ = overfit
    parent = run.model.state_dict()
    child = DetrTask.from_dict({**run.loop.task.config_dict(), "classes": {1: "odd", 2: "even"}})
    adapted = child.adapt_weights(parent, child.build_model())
    assert adapted["class_embed.weight"].shape == (4, 64)  # ids 0..2 and "no object"
    assert not torch.equal(adapted["class_embed.bias"][:3], parent["class_embed.bias"][:3])
    kept = [k for k in parent if not k.startswith("class_embed.")]
    assert kept and all(torch.equal(adapted[k], parent[k]) for k in kept)


def test_predictions_come_in_the_input_pictures_pixels(overfit):
    run, few = overfit
    sample = next(iter(ShardSet.open(few).iter_samples(["jpg", "json"])))
    half = io.BytesIO()
    Image.open(io.BytesIO(sample["jpg"])).resize((48, 48), Image.Resampling.BILINEAR).save(half, format="PNG")
    whole, halved = run.loop.task.predict(run.model.eval(), [{"image": sample["jpg"]}, {"image": half.getvalue()}])
    assert whole["boxes"] and len(whole["boxes"]) == len(whole["scores"]) == len(whole["names"])
    assert all(0 <= v <= 96 for box in whole["boxes"] for v in box)
    # The model sees both at 96 pixels; the halved picture's boxes come back in its own 48 pixels.
    assert halved["boxes"] and all(0 <= v <= 48 for box in halved["boxes"] for v in box)
    assert np.abs(2 * np.array(halved["boxes"][0]) - np.array(whole["boxes"][0])).max() < 6
