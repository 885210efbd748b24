"""One MLflow run, written through the client API so any process can continue it by run id."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import requests
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.errors import TvpError
from components.tracking.redaction import redact

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value
BATCH_LIMIT = 100  # params per log_batch call
METRIC_BATCH_LIMIT = 1000  # metrics per log_batch call (MLflow's limit)
UNAVAILABLE = (MlflowException, OSError, requests.exceptions.RequestException)  # what a dead server raises
log = logging.getLogger("tvp.tracking")
RUN_NAME_TAG = "tvp.run_name"  # the training run's name, shared with Ray Train's RunConfig(name=...)
RESUMED_TAG = "tvp.resumed"  # how many times a restarted driver continued this run
# MLflow 3's UI files an experiment by this tag: without it, it guesses, and files tvp's runs under GenAI
# ("Evaluation runs"). tvp trains models, so its experiments say so.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to dotted keys: {"a": {"b": 1}} → {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def model_training_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created if missing, marked a model-training experiment unless it has a kind."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older tvp; a kind someone chose is left alone
        client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return found.experiment_id


def find_run(client: MlflowClient, run_name: str, experiment_ids: list[str] | None = None) -> Run | None:
    """The run tvp named ``run_name`` (its ``tvp.run_name`` tag) in these experiments (default: all), if any."""
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return None
    found = client.search_runs(experiment_ids, filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'", max_results=1)
    return found[0] if found else None


class RunConflict(TvpError, ValueError):
    """A named run exists with another configuration: continuing it would mix two experiments."""


class RunTracker:
    """Logs to one run. Metrics that cannot be delivered (the server is down) wait in a backlog
    and go out, in order, with the next call that gets through; training never stops for tracking."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        self.backlog: list[Metric] = []
        self.delivered_late = 0
        self._down = False
        self.previous_status: str | None = None  # a continued run's status before this driver took it up

    @classmethod
    def create(
        cls,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        artifact_location: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> "RunTracker":
        """The run named ``run_name`` in ``experiment``: created, or continued when it exists.

        A restarted driver passes the same name and so keeps one run, whose
        metrics go on by step, instead of starting a second one.
        """
        client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        experiment_id = model_training_experiment(client, experiment, artifact_location)
        existing = find_run(client, run_name, [experiment_id])
        if existing:
            run_id = existing.info.run_id
            client.update_run(run_id, status="RUNNING")
            tracker = cls(tracking_uri, run_id)
            tracker.previous_status = existing.info.status
            tracker.set_tags({**dict(tags or {}), RESUMED_TAG: int(existing.data.tags.get(RESUMED_TAG, 0)) + 1})
            return tracker
        run = client.create_run(experiment_id, run_name=run_name, tags={**dict(tags or {}), RUN_NAME_TAG: run_name})
        return cls(tracking_uri, run.info.run_id)

    def check_params(self, params: Mapping[str, Any], run_name: str) -> None:
        """Raise ``RunConflict`` if this (continued) run was logged with different values for ``params``."""
        logged = self.client.get_run(self.run_id).data.params
        new = {k: str(v)[:MAX_PARAM_LENGTH] for k, v in flatten(redact(params)).items()}
        changed = sorted(k for k in new.keys() & logged.keys() if new[k] != logged[k])
        if changed:
            k = changed[0]
            raise RunConflict(
                f"run {run_name!r} was started with {k}={logged[k]}, not {new[k]}"
                f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}: give a new run name to train anew"
            )

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) config as dotted parameters, secrets masked."""
        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(redact(params)).items()]
        for start in range(0, len(items), BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[start : start + BATCH_LIMIT])

    @property
    def pending(self) -> int:
        """Metric values waiting for the tracking server."""
        return len(self.backlog)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._deliver([Metric(k, float(v), now, step) for k, v in metrics.items()])

    def _deliver(self, metrics: list[Metric]) -> None:
        """Send the backlog, then ``metrics``; keep whatever the server did not take."""
        waiting = len(self.backlog)
        self.backlog.extend(metrics)
        while self.backlog:
            batch = self.backlog[:METRIC_BATCH_LIMIT]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except UNAVAILABLE as exc:
                if not self._down:
                    log.warning("tracking server unreachable, buffering metrics: %s", str(exc).splitlines()[0])
                self._down = True
                return
            del self.backlog[: len(batch)]
        self.delivered_late += waiting
        self._down = False

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, local_dir: str | Path, artifact_path: str) -> str:
        """Upload a folder; return the artifact URI it lands at."""
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)
        return f"{self.client.get_run(self.run_id).info.artifact_uri}/{artifact_path}"

    def log_image(self, image: Any, artifact_file: str) -> None:
        """A picture (PIL image) as an artifact of the run; a dead server only costs the picture."""
        try:
            self.client.log_image(self.run_id, image, artifact_file=artifact_file)
        except UNAVAILABLE as exc:
            log.warning("could not log %s: %s", artifact_file, str(exc).splitlines()[0])

    def log_document(self, document: Any, artifact_file: str) -> None:
        """A JSON document (dict or list) as an artifact of the run; a dead server only costs the document."""
        try:
            self.client.log_dict(self.run_id, document, artifact_file)
        except UNAVAILABLE as exc:
            log.warning("could not log %s: %s", artifact_file, str(exc).splitlines()[0])

    def flush(self) -> dict[str, int]:
        """Try the backlog once more; return the tracking gap: metrics undelivered and delivered late."""
        self._deliver([])
        return {"undelivered": self.pending, "delivered_late": self.delivered_late}

    def finish(self, status: str = "FINISHED") -> dict[str, int]:
        """End the run; return the tracking gap (see ``flush``)."""
        gap = self.flush()
        try:
            self.client.set_terminated(self.run_id, status)
        except UNAVAILABLE as exc:
            log.warning("could not mark run %s %s: %s", self.run_id, status, str(exc).splitlines()[0])
        return gap
