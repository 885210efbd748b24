"""``tvp finetune TASK --from MODEL_URI``: where a fine-tuning run starts from.

``MODEL_URI`` is ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a
checkpoint folder (a training checkpoint, or a downloaded registered model),
or a folder in another library's layout that the task imports
(``Task.import_pretrained``: a released Hugging Face BERT, say).
The parent's task settings are the base of the run's ``task`` section (a
preset or ``--set`` may change them; ``Task.adapt_weights`` fits the weights
where shapes then differ), its assets (CLIP's tokenizer) are reused as they
are, and its name, version and run are recorded as ``tvp.parent_*`` tags. New
versions go to the parent's registered model unless ``tracking.registered_model``
names another, so promotion compares them with the parent's ``champion``.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save as safetensors_bytes

from components.tasks.registry import task_class
from components.tracking.model_package import checkpoint_in
from components.tracking.registry import download_registered_checkpoint, resolve_model_version
from components.training.checkpoint import CheckpointError, read_checkpoint_config, read_weights
from pipelines.training_run import Parent

PARENT_MODEL_TAG, PARENT_VERSION_TAG, PARENT_RUN_TAG = "tvp.parent_model", "tvp.parent_version", "tvp.parent_run_id"
PARENT_FORMAT_TAG = "tvp.parent_format"


def _is_tvp_checkpoint(folder: Path) -> bool:
    import json

    from components.training.checkpoint import CONFIG_FILE

    try:
        return "format_version" in json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False


def resolve_parent(model_uri: str, task_name: str, tracking_uri: str, download_dir: Path) -> Parent:
    """The parent behind ``model_uri``; it must be a checkpoint of ``task_name``."""
    tags: dict[str, str] = {}
    registered_model = None
    if model_uri.startswith("models:/"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        version = resolve_model_version(client, model_uri)
        folder = download_registered_checkpoint(f"models:/{version.name}/{version.version}", download_dir,
                                                tracking_uri)
        tags = {PARENT_MODEL_TAG: version.name, PARENT_VERSION_TAG: str(version.version),
                PARENT_RUN_TAG: version.run_id or ""}
        registered_model = version.name
    else:
        folder = checkpoint_in(Path(model_uri))
        if not folder.is_dir():
            raise CheckpointError(f"--from {model_uri}: no such checkpoint folder or models:/ URI")
        tags = {PARENT_MODEL_TAG: str(folder.resolve())}
        foreign = None if _is_tvp_checkpoint(folder) else task_class(task_name).import_pretrained(folder)
        if foreign is not None:  # another library's layout (a released Hugging Face model, say)
            task_config, files, weights = foreign
            return Parent(uri=model_uri, task=task_name, task_config=task_config, files=files,
                          weights=safetensors_bytes(weights), tags={**tags, PARENT_FORMAT_TAG: task_class(task_name).pretrained_layout})
    config = read_checkpoint_config(folder)
    if config["task"] != task_name:
        raise CheckpointError(f"--from {model_uri} is a {config['task']} checkpoint, not {task_name}")
    files = {name: (folder / name).read_text() for name in config["files"]}
    weights = safetensors_bytes(read_weights(folder))  # under this code's names: an older format migrated
    return Parent(uri=model_uri, task=config["task"], task_config=config["task_config"], files=files,
                  weights=weights, tags=tags, registered_model=registered_model)
