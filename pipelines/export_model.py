"""``tvp export MODEL_URI --output DIR``: a registered model (or a checkpoint) in another library's layout.

For BERT that is Hugging Face's (``model.safetensors``, ``config.json``,
``vocab.txt``, ``tokenizer_config.json``), which ``transformers``'
``from_pretrained`` loads. The output folder must be new or empty: an export
never mixes its files with others.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from components.tasks.registry import load_task_and_model
from components.tracking.model_package import checkpoint_in
from components.tracking.registry import download_registered_checkpoint
from components.training.checkpoint import CheckpointError


def export_model(model_uri: str, output: str | Path, tracking_uri: str | None) -> Path:
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CheckpointError(f"{out} exists and is not an empty folder: export into a new one")
    with tempfile.TemporaryDirectory() as tmp:
        if model_uri.startswith("models:/"):
            folder = download_registered_checkpoint(model_uri, Path(tmp), tracking_uri)
        else:
            folder = checkpoint_in(Path(model_uri))
        task, model = load_task_and_model(folder)
        return task.export_pretrained(model.state_dict(), out)
