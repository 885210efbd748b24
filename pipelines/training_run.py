"""``tvp train TASK`` and ``tvp finetune TASK``: shard sets → Ray Train → one MLflow run → registered version.

The same composition of the lifecycle steps (``run_steps.py``) serves the
demo, training from scratch and fine-tuning from a parent model. A named run
(``--name``) that is started again resumes from its latest checkpoint and
continues the same MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from components.data.loading.shard_plan import ShardSource
from components.data.shards.shard_set import ShardSet, work_index_dir
from components.evaluation.eval_facts import eval_facts
from components.tasks.registry import task_class
from components.tasks.task import EvalFacts, Task
from components.tracking.lineage import code_version, library_versions
from components.tracking.promotion import PromotionError
from components.training.stop_request import TrainingStopped
from pipelines.config import ConfigError
from pipelines.run_config import RunConfig
from pipelines.run_steps import (
    Echo,
    TrainingOutcome,
    fit_step,
    open_run,
    promote_step,
    register_step,
)

TRAIN_METRICS = ("train_loss",)  # what every checkpoint report carries, evaluation or not


@dataclass
class Parent:
    """The model a fine-tuning run starts from: its task, settings, assets and weights, and where it came from."""

    uri: str
    task: str
    task_config: dict[str, Any]
    files: dict[str, str]
    weights: bytes  # model.safetensors
    tags: dict[str, str] = field(default_factory=dict)  # tvp.parent_* tags for the run and the version
    registered_model: str | None = None  # the parent's registered model, where new versions go by default


def _absolute(location: str) -> str:
    """A local path made absolute; URIs (s3://, gs://, file://) as they are."""
    return location if "://" in location else str(Path(location).resolve())


def build_task(task_name: str, cfg: RunConfig, sources: list[ShardSource], index_dir: str,
               parent: Parent | None, echo: Echo) -> Task:
    """The task with its assets: the parent's (fine-tuning), or prepared from the training shards."""
    cls = task_class(task_name)
    task = cls(cfg.task_config(task_name), parent.files if parent else None)
    if parent is None and cls.asset_columns:
        echo(f"preparing {task_name} assets from the training data ({', '.join(cls.asset_columns)})")
        samples = chain.from_iterable(ShardSet.open(s.path, index_dir).iter_samples(cls.asset_columns)
                                      for s in sources)
        task = task.with_files(task.prepare_assets(samples))
    return task.fit_to_data(lambda: EvalFacts.from_manifest(eval_facts(sources[0].path, index_dir)))


def run_training(
    task_name: str,
    cfg: RunConfig,
    sources: list[ShardSource],
    eval_location: str | None,
    workdir: Path,
    run_name: str,
    tracking_uri: str,
    promote_if: str | None = None,
    parent: Parent | None = None,
    echo: Echo = print,
    tags: dict[str, str] | None = None,
) -> TrainingOutcome:
    """Train (or fine-tune from ``parent``), evaluate in the workers, register, and maybe promote.
    ``tags`` go on the run and its registered version with the lineage (``tvp.lineage``, say)."""
    if promote_if and eval_location is None:
        raise PromotionError(f"--promote-if {promote_if} needs evaluation data (--eval)")
    if eval_location is None and cfg.train.checkpoint_metric not in TRAIN_METRICS:
        raise ConfigError(f"train.checkpoint_metric {cfg.train.checkpoint_metric!r} is an evaluation metric: "
                          "give evaluation data (--eval)")
    index_dir = work_index_dir(workdir)
    # Workers run in Ray's own folders: a relative local path must mean what it meant where the command ran.
    sources = [ShardSource(_absolute(s.path), s.weight, s.index_dir or index_dir) for s in sources]
    eval_location = _absolute(eval_location) if eval_location is not None else None
    data_sets = [ShardSet.open(s.path, index_dir) for s in sources]  # clear error on an unfinished shard set
    evaluation = None
    if eval_location is not None:
        evaluation = {"location": eval_location, "index_dir": index_dir,
                      "facts": eval_facts(eval_location, index_dir)}
    task = build_task(task_name, cfg, sources, index_dir, parent, echo)
    lineage = {
        "data_manifest_hash": ",".join(d.content_hash for d in data_sets),
        "code_version": code_version(),
        "started_from": parent.uri if parent else "scratch",
        "tvp.task": task_name,
        **(parent.tags if parent else {}),
        **library_versions(),
        **(tags or {}),
    }
    if evaluation:
        lineage["eval_data_manifest_hash"] = evaluation["facts"]["content_hash"]
    run = open_run(tracking_uri, workdir, cfg.tracking.experiment, run_name, cfg.model_dump(mode="json"), lineage)
    try:
        verb = f"fine-tuning {task_name} from {parent.uri}" if parent else f"training {task_name}"
        echo(f"{verb} with Ray Train: {cfg.train.num_workers} workers, {cfg.train.epochs} epochs "
             f"(run {run_name}, MLflow run {run.run_id})")
        fitted = fit_step(run, task, cfg.train, sources, workdir, evaluation, parent.weights if parent else None)
        echo("registering the checkpoint in the MLflow model registry")
        registration = register_step(run, task, fitted.checkpoint, cfg.registered_model(task_name), fitted.metrics)
        promotion = None
        if promote_if:
            promotion = str(promote_step(run, registration, promote_if, fitted.metrics,
                                         lineage["eval_data_manifest_hash"]))
            echo(promotion)
        gap = run.tracker.finish("FINISHED")
        if gap["undelivered"]:
            echo(f"  warning: {gap['undelivered']} metric values could not be delivered to {tracking_uri}")
    except TrainingStopped:
        run.tracker.finish("KILLED")  # resumable: the same name continues this run
        raise
    except BaseException:
        run.tracker.finish("FAILED")
        raise
    return TrainingOutcome(
        run_name=run_name, run_id=run.run_id, tracking_uri=tracking_uri, experiment=cfg.tracking.experiment,
        registered_model=registration.name, model_version=registration.version, model_uri=registration.latest_uri,
        checkpoint_uri=registration.source, data_manifest_hash=lineage["data_manifest_hash"],
        metrics=fitted.metrics, promotion=promotion, parent=parent.tags if parent else {},
    )
