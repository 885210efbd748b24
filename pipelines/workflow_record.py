"""The record of one pipeline run: an MLflow run whose tags say, step by step, what happened.

Each step has tags ``tvp.step.NAME.status`` (RUNNING, FINISHED, FAILED,
STOPPED, SKIPPED), ``.outputs`` (the JSON it handed on), ``.duration_s``, ``.command``
(secrets masked), ``.exit_code`` and ``.mlflow_run_id`` (the step's own
MLflow run: a training step keeps its one run across resumes), and a metric
``step_duration_s.NAME``. The run is found again by its name, so a pipeline
started again with the same ``--name`` reads which steps finished and what
they handed on, from any machine that reaches the tracking store.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from components.tracking.redaction import redact, redact_value
from components.tracking.tracking_store import artifact_location
from components.tracking.run_tracker import RunConflict, RunTracker, find_run
from pipelines.config import ConfigError

EXPERIMENT = "tvp-pipelines"
FINISHED, RUNNING, FAILED, STOPPED, SKIPPED = "FINISHED", "RUNNING", "FAILED", "STOPPED", "SKIPPED"


def _find(client: MlflowClient, run_name: str):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return find_run(client, run_name, [experiment.experiment_id]) if experiment else None


def _tag(step: str, field: str) -> str:
    return f"tvp.step.{step}.{field}"


class PipelineRecord:
    def __init__(self, tracker: RunTracker, run_name: str):
        self.tracker, self.run_name = tracker, run_name
        self.tags = dict(tracker.client.get_run(tracker.run_id).data.tags)
        self.changed_file = False  # a continued run's pipeline file differs from the one it started with

    @classmethod
    def open(cls, tracking_uri: str, workdir: Path, pipeline: str, file_hash: str, params: dict[str, str],
             run_name: str) -> "PipelineRecord":
        """The run named ``run_name``: created, or continued (then its pipeline and parameters must match)."""
        logged = {f"param.{k}": v for k, v in redact(params).items()}
        earlier = _find(MlflowClient(tracking_uri), run_name)
        if earlier is not None:  # checked before the run is touched: a refused attempt leaves it as it was
            other = earlier.data.tags.get("tvp.pipeline")
            if other != pipeline:
                raise ConfigError(f"pipeline run {run_name!r} is a run of pipeline {other!r}, not {pipeline!r}: "
                                  "give another --name")
            changed = sorted(k for k in logged if k in earlier.data.params and earlier.data.params[k] != logged[k])
            if changed:
                k = changed[0]
                raise RunConflict(f"run {run_name!r} was started with {k}={earlier.data.params[k]}, not "
                                  f"{logged[k]}: give a new run name to run the pipeline anew")
        tracker = RunTracker.create(tracking_uri, EXPERIMENT, run_name, artifact_location(tracking_uri, workdir),
                                    tags={"tvp.pipeline": pipeline, "tvp.pipeline.file_hash": file_hash})
        record = cls(tracker, run_name)
        record.changed_file = earlier is not None and earlier.data.tags.get("tvp.pipeline.file_hash") != file_hash
        new = {k: v for k, v in logged.items() if earlier is None or k not in earlier.data.params}
        tracker.log_params(new)
        return record

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    @property
    def resumed(self) -> bool:
        return self.tracker.previous_status is not None

    def status(self, step: str) -> str | None:
        return self.tags.get(_tag(step, "status"))

    def outputs(self, step: str) -> dict[str, Any]:
        return json.loads(self.tags.get(_tag(step, "outputs"), "{}"))

    def started(self, step: str, argv: list[str]) -> None:
        attempts = int(self.tags.get(_tag(step, "attempts"), 0)) + 1
        self._set({_tag(step, "status"): RUNNING, _tag(step, "attempts"): attempts,
                   _tag(step, "started_at"): time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   _tag(step, "command"): " ".join(redact_value(a) for a in ["tvp", *argv])})

    def ended(self, step: str, status: str, exit_code: int, duration_s: float, outputs: dict[str, Any]) -> None:
        tags = {_tag(step, "status"): status, _tag(step, "exit_code"): exit_code,
                _tag(step, "duration_s"): round(duration_s, 1)}
        if status in (FINISHED, SKIPPED):
            tags[_tag(step, "outputs")] = json.dumps(outputs, sort_keys=True, default=str)
        if outputs.get("run_id"):
            tags[_tag(step, "mlflow_run_id")] = outputs["run_id"]
        self._set(tags)
        self.tracker.log_metrics({f"step_duration_s.{step}": duration_s}, step=0)

    def close(self, status: str) -> None:
        self.tracker.finish({STOPPED: "KILLED"}.get(status, status))

    def _set(self, tags: dict[str, Any]) -> None:
        self.tracker.set_tags(tags)
        self.tags.update({k: str(v) for k, v in tags.items()})
