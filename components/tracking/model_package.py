"""Registered versions as real MLflow models: an MLmodel with a pyfunc flavour around the checkpoint.

The package is ``MLmodel`` + ``python_model.py`` (``pyfunc_model.py``, run by
MLflow at load time) + ``artifacts/checkpoint/`` (safetensors weights, JSON
config, task files): the same folder fine-tuning starts from. Versions
registered before packages existed are bare checkpoint folders; both load.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema

from components.tracking import pyfunc_model

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


def save_model_package(checkpoint_dir: str | Path, dst: str | Path, inputs: dict[str, str] | None = None,
                       example: dict[str, list] | None = None) -> Path:
    """Write an MLflow pyfunc model at ``dst`` (which must not exist) holding ``checkpoint_dir``.

    ``inputs`` and ``example`` are the task's signature (``Task.inference_inputs``, ``inference_example``).
    """
    mlflow.pyfunc.save_model(
        path=str(dst),
        python_model=pyfunc_model.__file__,
        artifacts={pyfunc_model.CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
        signature=ModelSignature(inputs=input_schema(inputs or CLIP_INPUTS)),
        input_example=pd.DataFrame(example or CLIP_EXAMPLE),
        pip_requirements=_requirements(),
    )
    return Path(dst)


def checkpoint_in(local_dir: str | Path) -> Path:
    """The checkpoint folder inside a downloaded version: a package's artifact, or the folder itself (older versions)."""
    local = Path(local_dir)
    if (local / MLMODEL_FILE).is_file():
        return local / "artifacts" / pyfunc_model.CHECKPOINT_ARTIFACT
    return local
