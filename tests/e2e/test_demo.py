"""``tvp demo`` end to end: shards, one MLflow run, a registered model that loads back and scores the same."""

import json

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from components.data.ingest.digits_demo_data import CLASS_NAMES, PROMPT_TEMPLATES
from components.data.shards.shard_reader import iter_samples
from components.evaluation.batch_evaluation import evaluate, sample_batches
from components.evaluation.eval_facts import eval_facts
from components.tasks.registry import load_task_and_model
from components.tasks.task import EvalFacts
from components.tracking.registry import download_registered_checkpoint
from components.training.checkpoint import CHECKPOINT_FORMAT_VERSION

SUMMARY_KEYS = {"shards_dir", "num_train_samples", "tracking_uri", "run_id", "registered_model",
                "model_version", "zero_shot_top1", "chance_top1"}


def test_summary_reports_a_model_well_above_chance(demo_run):
    summary = demo_run["summary"]
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["num_train_samples"] == 1438 and summary["chance_top1"] == 0.1
    assert summary["zero_shot_top1"] >= 3 * summary["chance_top1"], summary
    out = demo_run["stdout"]
    assert "zero-shot top-1" in out and f"tvp ui --workdir {summary['workdir']}" in out and summary["run_id"] in out


def test_shard_sets_follow_the_contract(demo_run):
    train = demo_run["workdir"] / "shards" / "train"
    manifest = json.loads((train / "manifest.json").read_text())
    sizes = json.loads((train / "sizes.json").read_text())
    assert sum(sizes.values()) == manifest["num_samples"] == 1438
    for name in sizes:
        stem = name.removesuffix(".tar")
        assert (train / f"{stem}_stats.json").is_file() and (train / f"{stem}.parquet").is_file()
    assert not list(train.glob("*.tmp"))
    assert manifest["content_hash"] == demo_run["summary"]["data_manifest_hash"]


def test_one_finished_run_records_config_lineage_and_metrics(demo_run):
    summary = demo_run["summary"]
    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "24" and run.data.params["task.model.vision.patch_size"] == "8"
    assert run.data.tags["data_manifest_hash"] == summary["data_manifest_hash"]
    assert run.data.tags["code_version"] and run.data.tags["torch_version"].startswith("2.14")
    losses = client.get_metric_history(summary["run_id"], "loss")
    assert len(losses) >= 10 and losses[-1].value < losses[0].value
    assert run.data.metrics["zero_shot_top1"] == summary["zero_shot_top1"]
    assert run.data.metrics["tokens_per_s"] > 0 and 0 <= run.data.metrics["data_wait_fraction"] <= 1
    # The workers evaluated after every epoch, and each evaluation left a picture of its predictions.
    assert len(client.get_metric_history(summary["run_id"], "zero_shot_top1")) == 24
    pictures = [a.path for a in client.list_artifacts(summary["run_id"], "evaluation")]
    assert len(pictures) == 24 and all(p.endswith(".jpg") for p in pictures)
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]


def test_registered_model_loads_back_and_reproduces_the_logged_accuracy(demo_run, tmp_path):
    summary = demo_run["summary"]
    uri = f"models:/{summary['registered_model']}@latest"
    checkpoint = download_registered_checkpoint(uri, tmp_path / "ckpt", summary["tracking_uri"])
    names = sorted(p.name for p in checkpoint.iterdir())
    # Weights and JSON (the CLIP tokenizer's two files); no optimizer state.
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert json.loads((checkpoint / "config.json").read_text())["format_version"] == CHECKPOINT_FORMAT_VERSION
    task, model = load_task_and_model(checkpoint)
    # One process, its own batch size, equals what the two workers evaluated between them during training.
    facts = EvalFacts.from_manifest(eval_facts(summary["heldout_shards_dir"]))
    samples = iter_samples(summary["heldout_shards_dir"], task.eval_columns)
    metrics = evaluate(task, model, sample_batches(task, samples, 50), facts)
    assert metrics["zero_shot_top1"] == summary["zero_shot_top1"]
    version = MlflowClient(summary["tracking_uri"]).get_model_version(summary["registered_model"], summary["model_version"])
    assert version.run_id == summary["run_id"] and version.tags["data_manifest_hash"] == summary["data_manifest_hash"]


def test_registered_pyfunc_model_reproduces_the_logged_zero_shot_accuracy(demo_run, monkeypatch):
    """Zero-shot from the pyfunc flavour's embeddings alone: prompts in, images in, the same top-1 out."""
    summary = demo_run["summary"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", summary["tracking_uri"])
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", summary["tracking_uri"])
    model = mlflow.pyfunc.load_model(f"models:/{summary['registered_model']}/{summary['model_version']}")
    prompts = [[t.format(name) for t in PROMPT_TEMPLATES] for name in CLASS_NAMES]
    texts = model.predict(pd.DataFrame({"text": [p for group in prompts for p in group]}))
    text = np.array(texts["text_embedding"].tolist()).reshape(len(CLASS_NAMES), len(PROMPT_TEMPLATES), -1)
    assert np.allclose(np.linalg.norm(text, axis=2), 1, atol=1e-5)
    classifier = text.mean(axis=1)
    classifier /= np.linalg.norm(classifier, axis=1, keepdims=True)
    samples = list(iter_samples(summary["heldout_shards_dir"], ["jpg", "json"]))
    images = model.predict(pd.DataFrame({"image": [s["jpg"] for s in samples]}))
    predicted = (np.array(images["image_embedding"].tolist()) @ classifier.T).argmax(axis=1)
    labels = np.array([json.loads(s["json"])["label"] for s in samples])
    assert float((predicted == labels).mean()) == pytest.approx(summary["zero_shot_top1"], abs=1e-9)
