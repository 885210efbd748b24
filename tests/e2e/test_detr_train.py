"""``tvp train detr`` as a user runs it (the issue's one TorchTrainer run) on the embedded digit scenes: the run
records COCO AP, its pictures and its detections in COCO's results format, the registered version serves boxes
in the input picture's pixels, and fine-tuning from the registry onto a new label set (odd and even digits,
through the in-process harness) starts from it with a new class head."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import safetensors.torch
from mlflow.tracking import MlflowClient

from components.data.loading.shard_plan import ShardSource
from components.data.shards.shard_set import ShardSet
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import finalize_shard_set, write_shard
from components.tracking.registry import download_registered_checkpoint
from components.training.harness import train_in_process
from pipelines.finetune import resolve_parent
from pipelines.run_config import load_run_config
from pipelines.training_run import build_task
from tests.conftest import run_tvp

PARITY = {1: "odd", 2: "even"}


def _parity_scenes(digit_scenes, out) -> str:
    """A new label set: the first held-out scenes with each digit relabelled odd (1) or even (2)."""
    samples = []
    for sample in islice(ShardSet.open(str(digit_scenes / "heldout")).iter_samples(["jpg", "json"]), 16):
        meta = json.loads(sample["json"])
        meta["category_ids"] = [1 if (c - 1) % 2 else 2 for c in meta["category_ids"]]  # ids are digit + 1
        samples.append({**sample, "json": json.dumps(meta).encode()})
    ShardStore(str(out)).makedirs()
    write_shard(str(out), 0, samples, {"count": len(samples)})
    finalize_shard_set(str(out), {"kind": "parity scenes"}, {}, extra={"classes": PARITY})
    return str(out)


def test_train_detr_registers_a_detector_with_ap_and_pictures(digit_scenes, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_tvp("train", "detr", "--data", str(digit_scenes / "train"), "--eval", str(digit_scenes / "heldout"),
                     "--workdir", str(tmp_path / "work"), "--name", "scenes", "--set", "train.epochs=1",
                     env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered tvp-detr version 1" in result.stdout and "AP50:" in result.stdout

    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version("tvp-detr", "1")
    run = client.get_run(version.run_id)
    metrics = run.data.metrics
    assert {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"} <= set(metrics)
    assert metrics["num_eval_images"] == 200 and 0.0 <= metrics["AP50"] <= 1.0
    for folder in ("evaluation/detections", "evaluation/decoder_attention"):
        assert any(a.path.startswith(f"{folder}/step_") for a in client.list_artifacts(run.info.run_id, folder))
    [results] = client.list_artifacts(run.info.run_id, "evaluation/coco_results")
    detections = json.loads(Path(client.download_artifacts(run.info.run_id, results.path, str(tmp_path))).read_text())
    assert {d["image_id"] for d in detections} <= set(range(1001, 1201))  # the held-out ids
    assert all(len(d["bbox"]) == 4 and 1 <= d["category_id"] <= 10 and 0 <= d["score"] <= 1 for d in detections)

    folder = download_registered_checkpoint("models:/tvp-detr/1", tmp_path / "registered", uri)
    sample = next(iter(ShardSet.open(str(digit_scenes / "heldout")).iter_samples(["jpg"])))
    found = mlflow.pyfunc.load_model(str(folder.parents[1])).predict(pd.DataFrame({"image": [sample["jpg"]]})).iloc[0]
    assert len(found["boxes"]) == len(found["scores"]) == len(found["labels"])

    # Fine-tuning from the registry, as tvp finetune detr resolves it, onto the parity label set.
    parent = resolve_parent("models:/tvp-detr@latest", "detr", uri, tmp_path / "parent")
    assert parent.tags["tvp.parent_run_id"] == run.info.run_id and len(parent.task_config["classes"]) == 10
    parity = _parity_scenes(digit_scenes, tmp_path / "parity")
    cfg = load_run_config("detr", "detr-finetune", [], base_task=parent.task_config)
    task = build_task("detr", cfg, [ShardSource(parity, 1.0)], str(tmp_path / "index"), parent,
                      echo=lambda line: None)
    assert task.config.classes == PARITY
    train = {**cfg.train.__dict__, "epochs": 1, "batch_size": 8, "loader_workers": 0, "num_workers": 1,
             "preemption_check_every_steps": 0, "system_metrics_every_s": 0}
    spec = {"task": "detr", "task_config": task.config_dict(), "files": task.files, "train": train,
            "sources": [[parity, 1.0]], "init_weights": parent.weights}
    child = train_in_process(spec, tmp_path / "child").model.state_dict()
    assert child["class_embed.weight"].shape[0] == 4  # ids 0..2 and "no object"
    kept = [k for k in child if not k.startswith("class_embed.") and child[k].is_floating_point()]
    # Two small steps from the parent's weights: every other tensor is still close to the parent's.
    start = safetensors.torch.load(parent.weights)
    assert kept and max(float((child[k] - start[k]).abs().max()) for k in kept) < 0.05
