"""``tvp train detr`` as a user runs it (the issue's one TorchTrainer run) on the embedded digit scenes: the run
records COCO AP and its pictures, the registered version serves boxes in the input picture's pixels, and
fine-tuning from the registry starts from it."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
from mlflow.tracking import MlflowClient

from components.data.shards.shard_set import ShardSet
from components.tracking.registry import download_registered_checkpoint
from pipelines.finetune import resolve_parent
from tests.conftest import run_tvp


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

    folder = download_registered_checkpoint("models:/tvp-detr/1", tmp_path / "registered", uri)
    sample = next(iter(ShardSet.open(str(digit_scenes / "heldout")).iter_samples(["jpg"])))
    found = mlflow.pyfunc.load_model(str(folder.parents[1])).predict(pd.DataFrame({"image": [sample["jpg"]]})).iloc[0]
    assert len(found["boxes"]) == len(found["scores"]) == len(found["labels"])

    parent = resolve_parent("models:/tvp-detr@latest", "detr", uri, tmp_path / "parent")
    assert parent.tags["tvp.parent_run_id"] == run.info.run_id and parent.task_config["classes"]
