"""What a ``tvp`` command hands to the next step of a pipeline: a small JSON object of its results.

``tvp run`` starts each step with ``TVP_STEP_OUTPUTS`` naming a file; the
command writes its outputs there when it succeeds (the shard set it wrote and
its content hash, the MLflow run and the registered version, the metrics).
Without the variable nothing is written: a command run by hand is unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from components.data.shards.atomic_files import write_json_atomic

OUTPUTS_ENV = "TVP_STEP_OUTPUTS"


def write_step_outputs(outputs: dict[str, Any] | None) -> None:
    path = os.environ.get(OUTPUTS_ENV)
    if path and outputs is not None:
        write_json_atomic(path, outputs)


def read_step_outputs(path: str | Path) -> dict[str, Any]:
    """The outputs a step wrote; an empty dict when it wrote none (commands with nothing to hand on)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
