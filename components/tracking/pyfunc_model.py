"""The MLflow pyfunc face of a tvp checkpoint, logged as models-from-code.

MLflow runs this file when it loads a registered version
(``mlflow.pyfunc.load_model``): nothing is pickled, the weights come from the
checkpoint folder logged beside it, and ``predict`` is the task's own.
Loading needs tvp installed, as it needs torch.
"""

from __future__ import annotations

from typing import Any

import mlflow.models
import mlflow.pyfunc
import pandas as pd

CHECKPOINT_ARTIFACT = "checkpoint"


class TvpPyfuncModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from components.tasks.registry import load_task_and_model

        self.task, self.model = load_task_and_model(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        records = [{k: v for k, v in row.items() if v is not None and v == v} for row in model_input.to_dict("records")]
        return pd.DataFrame(self.task.predict(self.model, records))


mlflow.models.set_model(TvpPyfuncModel())
