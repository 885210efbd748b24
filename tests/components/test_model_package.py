"""Registered versions are MLflow pyfunc models around the checkpoint; older bare-checkpoint versions still load."""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from components.data.loading.image_batches import images_to_array
from components.data.loading.tokenizer import train_caption_tokenizer
from components.tracking.model_package import save_model_package
from components.tracking.registry import download_registered_checkpoint, register_checkpoint
from components.training.checkpoint import save_checkpoint_state
from components.tasks.clip import TOKENIZER_FILE, ClipTask, ClipTaskConfig
from components.tasks.registry import load_task_and_model
from tests.components.test_transformer_blocks import tiny_clip_config


def _checkpoint(path):
    tokenizer = train_caption_tokenizer(["a photo of a zero", "a photo of a one"], vocab_size=300)
    config = tiny_clip_config()
    config.text.vocab_size = tokenizer.get_vocab_size()
    task = ClipTask(ClipTaskConfig(model=config), {TOKENIZER_FILE: tokenizer.to_str()})
    torch.manual_seed(0)
    save_checkpoint_state(path, task.build_model().state_dict(), task.name, task.config_dict(), task.files)
    return path


def _jpeg(value: int, size: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, 40)).save(out, format="JPEG")
    return out.getvalue()


def test_pyfunc_flavour_predicts_the_models_own_embeddings(tmp_path):
    checkpoint = _checkpoint(tmp_path / "checkpoint")
    package = save_model_package(checkpoint, tmp_path / "model")
    assert "python_function" in (package / "MLmodel").read_text()
    assert not list(package.rglob("*.pkl"))  # models-from-code: nothing pickled

    loaded = mlflow.pyfunc.load_model(str(package))
    image = _jpeg(90, tiny_clip_config().vision.image_size)
    out = loaded.predict(pd.DataFrame({"text": ["a photo of a one", None], "image": [None, image]}))

    task, model = load_task_and_model(checkpoint)
    with torch.no_grad():
        text = model.encode_text(torch.from_numpy(task.tokenize(["a photo of a one"])))[0].numpy()
        pixels = images_to_array([image], tiny_clip_config().vision.image_size)
        picture = model.encode_image(torch.from_numpy(pixels))[0].numpy()
    np.testing.assert_allclose(out["text_embedding"][0], text, atol=1e-6)
    np.testing.assert_allclose(out["image_embedding"][1], picture, atol=1e-6)
    assert np.isnan(out["image_embedding"][0]) and np.isnan(out["text_embedding"][1])


def test_both_package_and_bare_checkpoint_versions_load(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    checkpoint = _checkpoint(tmp_path / "checkpoint")
    client.log_artifacts(run_id, str(checkpoint), "checkpoint")  # how versions were registered before packages
    client.log_artifacts(run_id, str(save_model_package(checkpoint, tmp_path / "model")), "model")
    artifacts = client.get_run(run_id).info.artifact_uri
    old = register_checkpoint(client, "m", f"{artifacts}/checkpoint", run_id)
    new = register_checkpoint(client, "m", f"{artifacts}/model", run_id)

    for version in (old, new):
        local = download_registered_checkpoint(f"models:/m/{version}", tmp_path / f"v{version}", uri)
        assert sorted(p.name for p in local.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
        load_task_and_model(local)
    pyfunc = mlflow.pyfunc.load_model(f"{artifacts}/model")
    assert pyfunc.metadata.get_input_schema().input_names() == ["text", "image"]


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "clip_version_f4394fe"


def test_a_version_packaged_by_earlier_tvp_still_loads_and_predicts(tmp_path):
    """The package in tests/fixtures was written by tvp at commit f4394fe (before tasks had a package):
    its loader imports the old module path, its config the old CLIP settings."""
    expected = np.array(json.loads((FIXTURE / "expected_text_embedding.json").read_text()))
    out = mlflow.pyfunc.load_model(str(FIXTURE)).predict(pd.DataFrame({"text": ["a photo of a one"]}))
    np.testing.assert_allclose(out["text_embedding"][0], expected, atol=1e-6)
    task, model = load_task_and_model(FIXTURE / "artifacts" / "checkpoint")
    assert task.name == "clip" and task.files
