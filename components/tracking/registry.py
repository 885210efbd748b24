"""Registered models: checkpoints become versions; ``models:/NAME@ALIAS`` brings them back.

MLflow reserves the alias ``latest`` and resolves ``models:/NAME@latest`` to
the newest version itself, so registering a version is what makes it
``latest``; other aliases (``champion``) are set explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

from components.tracking.model_package import checkpoint_in
from components.tracking.tracking_store import process_tracking_uri

LATEST_ALIAS = "latest"


def _registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def register_checkpoint(
    client: MlflowClient,
    name: str,
    source: str,
    run_id: str,
    tags: dict[str, str] | None = None,
    aliases: tuple[str, ...] = (),
) -> str:
    """Register the model at artifact URI ``source`` as a new version of ``name``; return the version."""
    _registered_model(client, name)
    version = client.create_model_version(name, source, run_id=run_id, tags=tags or {})
    _set_aliases(client, name, version.version, aliases)
    return version.version


def register_logged_model(
    client: MlflowClient,
    name: str,
    model_id: str,
    run_id: str,
    tags: dict[str, str] | None = None,
    aliases: tuple[str, ...] = (),
) -> str:
    """Register the run's LoggedModel ``model_id`` as a new version of ``name``; return the version.

    As MLflow's own ``register_model`` does: the version's source is ``models:/<model_id>`` (which the
    UI shows as its source model) and the logged model lists the version in its
    ``mlflow.modelVersions`` tag (which the UI shows on the model and its run).
    """
    _registered_model(client, name)
    with process_tracking_uri(client.tracking_uri):  # a database store looks the model up through it
        version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, tags=tags or {},
                                              model_id=model_id)
    listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    listed.append({"name": name, "version": str(version.version)})
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(listed)})
    _set_aliases(client, name, version.version, aliases)
    return version.version


def _set_aliases(client: MlflowClient, name: str, version: str, aliases: tuple[str, ...]) -> None:
    for alias in aliases:
        if alias.lower() != LATEST_ALIAS:
            client.set_registered_model_alias(name, alias, version)


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
    A version registered from a LoggedModel has the source ``models:/<model_id>``; the registry says where
    its files are.
    """
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    version = resolve_model_version(client, model_uri)
    location = client.get_model_version_download_uri(version.name, version.version)
    Path(dst).mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dst), tracking_uri=tracking_uri)
    return checkpoint_in(local)
