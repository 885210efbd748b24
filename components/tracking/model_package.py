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

# Tasks read the columns they know; others are ignored. Every column is optional.
INPUT_SCHEMA = Schema([
    ColSpec(DataType.string, "text", required=False),
    ColSpec(DataType.binary, "image", required=False),
])

INPUT_EXAMPLE = pd.DataFrame({"text": ["a photo of a cat."]})


def _requirements() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME_PACKAGES]


def save_model_package(checkpoint_dir: str | Path, dst: str | Path) -> Path:
    """Write an MLflow pyfunc model at ``dst`` (which must not exist) holding ``checkpoint_dir``."""
    mlflow.pyfunc.save_model(
        path=str(dst),
        python_model=pyfunc_model.__file__,
        artifacts={pyfunc_model.CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
        signature=ModelSignature(inputs=INPUT_SCHEMA),
        input_example=INPUT_EXAMPLE,
        pip_requirements=_requirements(),
    )
    return Path(dst)


def checkpoint_in(local_dir: str | Path) -> Path:
    """The checkpoint folder inside a downloaded version: a package's artifact, or the folder itself (older versions)."""
    local = Path(local_dir)
    if (local / MLMODEL_FILE).is_file():
        return local / "artifacts" / pyfunc_model.CHECKPOINT_ARTIFACT
    return local
