"""``tvp train vit`` as a user runs it (the issue's one TorchTrainer run) on the embedded digits, then a
fine-tuning run started from the registered model (``models:/tvp-vit@latest``) through the in-process
harness: the run records top-1/top-5 and its pictures, the version serves predictions, and the child
keeps the parent's encoder under a new head at a new resolution."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd
from mlflow.tracking import MlflowClient

from components.data.loading.shard_plan import ShardSource
from components.data.shards.shard_set import ShardSet
from components.tracking.registry import download_registered_checkpoint
from components.training.harness import train_in_process
from pipelines.finetune import resolve_parent
from pipelines.run_config import load_run_config
from pipelines.training_run import build_task
from tests.conftest import run_tvp

SMALL = ["--set", "task.model.patch_size=8", "--set", "task.model.width=48", "--set", "task.model.layers=2",
         "--set", "task.model.heads=3"]


def test_train_vit_registers_a_classifier_with_pictures_and_fine_tuning_starts_from_it(digit_images, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_tvp("train", "vit", "--data", str(digit_images / "train"), "--eval", str(digit_images / "heldout"),
                     "--workdir", str(tmp_path / "work"), "--name", "digits", *SMALL,
                     "--set", "train.epochs=2", "--set", "train.lr=0.003", env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered tvp-vit version 1" in result.stdout and "top1:" in result.stdout

    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version("tvp-vit", "1")
    run = client.get_run(version.run_id)
    assert 0.1 < run.data.metrics["top1"] <= run.data.metrics["top5"] <= 1.0
    assert run.data.metrics["num_classes"] == 10
    pictures = {a.path for folder in ("evaluation/confusion_matrix", "evaluation/attention_rollout")
                for a in client.list_artifacts(run.info.run_id, folder)}
    assert any(p.startswith("evaluation/confusion_matrix/step_") for p in pictures)
    assert any(p.startswith("evaluation/attention_rollout/step_") for p in pictures)

    # The registered version classifies an encoded picture (its pyfunc signature: image bytes).
    folder = download_registered_checkpoint("models:/tvp-vit/1", tmp_path / "registered", uri)
    package = folder.parents[1]  # the pyfunc package around the checkpoint (artifacts/checkpoint)
    sample = next(iter(ShardSet.open(str(digit_images / "heldout")).iter_samples(["jpg"])))
    predicted = mlflow.pyfunc.load_model(str(package)).predict(pd.DataFrame({"image": [sample["jpg"]]})).iloc[0]
    assert predicted["label"] == predicted["top_labels"][0] and len(predicted["top_probabilities"]) == 5

    # Fine-tuning from the registry, as tvp finetune vit resolves it, at 48 pixels with a linear probe.
    parent = resolve_parent("models:/tvp-vit@latest", "vit", uri, tmp_path / "parent")
    assert parent.tags["tvp.parent_model"] == "tvp-vit" and parent.tags["tvp.parent_run_id"] == run.info.run_id
    cfg = load_run_config("vit", "vit-finetune", ["task.model.image_size=48", "task.freeze_backbone=true",
                                                  "task.model.drop_path_rate=0"], base_task=parent.task_config)
    sources = [ShardSource(str(digit_images / "train"), 1.0)]
    task = build_task("vit", cfg, sources, str(tmp_path / "index"), parent, echo=lambda line: None)
    assert task.config.labels == parent.task_config["labels"] and task.config.augment.image_size == 48
    train = {**cfg.train.__dict__, "epochs": 1, "samples_per_epoch": 128, "loader_workers": 0,
             "preemption_check_every_steps": 0, "system_metrics_every_s": 0, "num_workers": 1}
    spec = {"task": "vit", "task_config": task.config_dict(), "files": task.files, "train": train,
            "sources": [[str(digit_images / "train"), 1.0]], "init_weights": parent.weights}
    child = train_in_process(spec, tmp_path / "child").model.state_dict()
    assert child["pos_embed"].shape[1] == 1 + 6 * 6
