"""Registered models: checkpoints become versions; ``models:/NAME@ALIAS`` brings them back.

MLflow reserves the alias ``latest`` and resolves ``models:/NAME@latest`` to
the newest version itself, so registering a version is what makes it
``latest``; other aliases (``champion``) are set explicitly.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.tracking.model_package import checkpoint_in

LATEST_ALIAS = "latest"


def register_checkpoint(
    client: MlflowClient,
    name: str,
    source: str,
    run_id: str,
    tags: dict[str, str] | None = None,
    aliases: tuple[str, ...] = (),
) -> str:
    """Register the checkpoint folder at artifact URI ``source`` as a new version of ``name``; return the version."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(name, source, run_id=run_id, tags=tags or {})
    for alias in aliases:
        if alias.lower() != LATEST_ALIAS:
            client.set_registered_model_alias(name, alias, version.version)
    return version.version


def resolve_model_version(client: MlflowClient, model_uri: str) -> ModelVersion:
    """The version named by ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    if not model_uri.startswith("models:/"):
        raise ValueError(f"{model_uri!r} is not a models:/NAME@ALIAS or models:/NAME/VERSION URI")
    ref = model_uri.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, sep, version = ref.rpartition("/")
    if not sep or not version.isdigit():
        raise ValueError(f"{model_uri!r} names neither an alias nor a version number")
    return client.get_model_version(name, version)


def download_registered_checkpoint(model_uri: str, dst: str | Path, tracking_uri: str) -> Path:
    """Copy the version behind ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) into ``dst``; return its checkpoint folder.

    Versions are MLflow pyfunc packages with the checkpoint inside, or (registered by older tvp) bare checkpoints.
    """
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    version = resolve_model_version(client, model_uri)
    Path(dst).mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dst), tracking_uri=tracking_uri)
    return checkpoint_in(local)
