"""Registered versions as real MLflow models: an MLmodel with a pyfunc flavour around the checkpoint.

The package is ``MLmodel`` + ``python_model.py`` (``pyfunc_model.py``, run by
MLflow at load time) + ``artifacts/checkpoint/`` (safetensors weights, JSON
config, task files): the same folder fine-tuning starts from. Versions
registered before packages existed are bare checkpoint folders; both load.

A run's package is logged with MLflow's own model logging, as a LoggedModel
of the run: the MLflow UI lists it on the run, and a version registered from
it links back to it.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.entities import LoggedModel
from mlflow.models import Model, ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema

from components.tracking import pyfunc_model
from components.tracking.tracking_store import process_tracking_uri

MLMODEL_FILE = "MLmodel"
# What a loading environment needs besides tvp itself (installed from the project).
RUNTIME_PACKAGES = ("torch", "safetensors", "tokenizers", "numpy", "pillow", "pydantic", "pandas")

# CLIP's signature, the one versions registered before tasks declared their own carry.
CLIP_INPUTS = {"text": "string", "image": "binary"}
CLIP_EXAMPLE = {"text": ["a photo of a cat."]}


def input_schema(inputs: dict[str, str]) -> Schema:
    """A task's ``inference_inputs`` (column → MLflow type name) as an all-optional input schema."""
    return Schema([ColSpec(DataType[kind], column, required=False) for column, kind in inputs.items()])


def _requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME_PACKAGES]


def _package_arguments(checkpoint_dir: str | Path, inputs: dict[str, str] | None,
                       example: dict[str, list] | None) -> dict:
    """What MLflow's pyfunc flavour is given to save (or log) a package around ``checkpoint_dir``."""
    return {
        "python_model": pyfunc_model.__file__,
        "artifacts": {pyfunc_model.CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
        "signature": ModelSignature(inputs=input_schema(inputs or CLIP_INPUTS)),
        "input_example": pd.DataFrame(example or CLIP_EXAMPLE),
        "pip_requirements": _requirements(),
    }


def save_model_package(checkpoint_dir: str | Path, dst: str | Path, inputs: dict[str, str] | None = None,
                       example: dict[str, list] | None = None) -> Path:
    """Write an MLflow pyfunc model at ``dst`` (which must not exist) holding ``checkpoint_dir``.

    ``inputs`` and ``example`` are the task's signature (``Task.inference_inputs``, ``inference_example``).
    """
    mlflow.pyfunc.save_model(path=str(dst), **_package_arguments(checkpoint_dir, inputs, example))
    return Path(dst)


def log_model_package(client: MlflowClient, run_id: str, checkpoint_dir: str | Path,
                      inputs: dict[str, str] | None = None, example: dict[str, list] | None = None,
                      tags: dict[str, str] | None = None, name: str = "model") -> LoggedModel:
    """Log a package around ``checkpoint_dir`` as a LoggedModel of run ``run_id``; return it (READY).

    The model is created in the run's experiment first (MLflow's logging would otherwise put it in the
    process's default experiment), then MLflow's ``Model.log`` writes, checks and uploads the package
    and records it as an output of the run.
    """
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags)
    with process_tracking_uri(client.tracking_uri):
        Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id, model_id=model.model_id,
                  **_package_arguments(checkpoint_dir, inputs, example))
    return client.get_logged_model(model.model_id)


def checkpoint_in(local_dir: str | Path) -> Path:
    """The checkpoint folder inside a downloaded version: a package's artifact, or the folder itself (older versions)."""
    local = Path(local_dir)
    if (local / MLMODEL_FILE).is_file():
        return local / "artifacts" / pyfunc_model.CHECKPOINT_ARTIFACT
    return local
