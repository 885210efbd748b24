"""``tvp submit`` and ``tvp jobs`` against a real cluster (``ray start --head`` plus a worker node, token auth).

The one job of this suite that trains is the clip-demo pipeline: submitted,
stopped by ``tvp jobs stop`` while it trains, and submitted again under the
same pipeline run name, which resumes it: no step that finished runs again,
and training continues in its own MLflow run.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.job_submission import JobError, prepare_job
from tests.cluster.ray_start_cluster import RayStartCluster
from tests.conftest import run_tvp


@pytest.fixture(scope="module")
def cluster():
    started = RayStartCluster()
    yield started
    started.stop()


def tvp(cluster: RayStartCluster, *args: str, timeout: float = 600, **env: str | None):
    return run_tvp(*args, env={**cluster.client_env, "MLFLOW_TRACKING_URI": None, **env}, timeout=timeout)


def job_id(output: str) -> str:
    return re.search(r"submitted job (\S+) to", output).group(1)


def training_run(workdir: Path, name: str):
    """The training run named ``name`` (None before it exists) and a client of the work folder's store;
    call it once the store exists (a client's first look creates and migrates the database)."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tvp")
    if experiment is None:
        return None, client
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`tvp.run_name` = '{name}'")
    return (runs[0] if runs else None), client


def wait_until(condition, what: str, cluster: RayStartCluster, job: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and cluster.job_status(job) in ("PENDING", "RUNNING"):
        if condition():
            return
        time.sleep(1)
    if condition():
        return
    raise AssertionError(f"{what}: not seen, job {cluster.job_status(job)}; its log ends:\n"
                         f"{cluster.job_log(job)[-5000:]}")


def test_a_pipeline_job_stopped_while_training_resumes_when_submitted_again(cluster, tmp_path):
    workdir = tmp_path / "work"
    command = ["--", "tvp", "run", "clip-demo", "--workdir", str(workdir), "--name", "nightly",
               "--param", "epochs=2"]
    submitted = tvp(cluster, "submit", *command)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    first = job_id(submitted.stdout)

    def training_logged() -> bool:
        if "[4/6] train: tvp train" not in cluster.job_log(first):  # the job made the store well before
            return False
        run, client = training_run(workdir, "nightly-train")
        return run is not None and bool(client.get_metric_history(run.info.run_id, "loss"))

    wait_until(training_logged, "the pipeline's training step to log a loss", cluster, first)
    stop = tvp(cluster, "jobs", "stop", first)
    assert stop.returncode == 0 and f"job {first}: stop requested" in stop.stdout
    wait_until(lambda: cluster.job_status(first) == "STOPPED", "the job to stop", cluster, first, timeout=120)
    logs = tvp(cluster, "jobs", "logs", first).stdout
    assert "step train was stopped; run the same command with --name nightly to resume from it" in logs, logs[-3000:]
    stopped_run, client = training_run(workdir, "nightly-train")
    assert stopped_run.info.status == "KILLED"  # stopped after its checkpoint: resumable

    again = tvp(cluster, "submit", "--wait", *command)
    assert again.returncode == 0, (again.stdout[-4000:], again.stderr[-2000:])
    for step in ("tables", "shards", "heldout"):
        assert f"{step}: finished in an earlier attempt, not run again" in again.stdout
    assert "promoted: " in again.stdout and f"job {job_id(again.stdout)} succeeded (exit code 0)" in again.stdout
    resumed_run, _ = training_run(workdir, "nightly-train")
    assert resumed_run.info.run_id == stopped_run.info.run_id  # one MLflow run for the training job
    assert resumed_run.info.status == "FINISHED" and resumed_run.data.tags["tvp.resumed"] == "1"
    pipeline = client.search_runs([client.get_experiment_by_name("tvp-pipelines").experiment_id])
    assert len(pipeline) == 1 and pipeline[0].info.status == "FINISHED"
    tags = pipeline[0].data.tags
    assert tags["tvp.step.train.attempts"] == "2" and tags["tvp.step.shards.attempts"] == "1"
    assert tags["tvp.step.train.mlflow_run_id"] == resumed_run.info.run_id
    assert json.loads(tags["tvp.step.promote.outputs"])["promoted"] is True  # the first champion

    listed = tvp(cluster, "jobs", "list").stdout
    assert f"{first}  STOPPED" in listed and f"{job_id(again.stdout)}  SUCCEEDED" in listed


def test_jobs_need_the_clusters_token_and_a_real_address(cluster):
    refused = tvp(cluster, "jobs", "list", RAY_AUTH_TOKEN="0" * 64)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("refused this client's token: set RAY_AUTH_TOKEN (or "
                                           "RAY_AUTH_TOKEN_PATH) to the cluster's token")
    gcs = tvp(cluster, "jobs", "list", RAY_ADDRESS="127.0.0.2:6379")
    assert "tvp: error: 127.0.0.2:6379 is not a Jobs API address: jobs go to the head's dashboard, " \
           "e.g. http://127.0.0.2:8265" in gcs.stderr
    missing = tvp(cluster, "jobs", "show", "raysubmit_nope")
    assert missing.returncode == 2 and "no job raysubmit_nope on the cluster" in missing.stderr


def test_what_must_not_travel_in_a_job_is_refused_before_submission(cluster, tmp_path, monkeypatch):
    secret = tvp(cluster, "submit", "--", "tvp", "train", "clip", "--data", "s3://b/s", "--set",
                 "tracking.password=hunter2")
    assert secret.returncode == 2 and "an argument looks like a secret" in secret.stderr
    assert "hunter2" not in secret.stderr + secret.stdout
    in_uri = tvp(cluster, "submit", "--", "tvp", "demo-data", "--output", "x",
                 MLFLOW_TRACKING_URI="http://me:hunter2@127.0.0.1:5000")
    assert in_uri.returncode == 2 and "MLFLOW_TRACKING_URI holds a password" in in_uri.stderr
    assert "hunter2" not in in_uri.stderr + in_uri.stdout
    not_a_job = tvp(cluster, "submit", "--", "tvp", "jobs", "list")
    assert not_a_job.returncode == 2 and "tvp jobs is not a job" in not_a_job.stderr

    # A cluster with nodes on other machines: judged here without one (prepare_job is told so).
    shards = tmp_path / "shards"
    shards.mkdir()
    preset = tmp_path / "mine.yaml"
    preset.write_text("train: {epochs: 1}\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(JobError, match="the tracking store would be a SQLite file in the job folder is not one"):
        prepare_job(["tvp", "train", "clip", "--data", "s3://b/s"], on_this_machine=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    with pytest.raises(JobError, match=f"{shards} is on this machine only"):
        prepare_job(["tvp", "train", "clip", "--data", str(shards)], on_this_machine=False)
    job = prepare_job(["tvp", "train", "clip", "--data", "s3://b/s", "--config", str(preset),
                       "--workdir", str(tmp_path)], on_this_machine=False)
    try:
        shipped = Path(job.runtime_env["working_dir"])
        assert (shipped / "job_files" / "mine.yaml").read_text() == preset.read_text()
        assert sorted(p.name for p in shipped.iterdir()) == ["cluster", "components", "job_files", "pipelines",
                                                             "pyproject.toml"]
        assert job.entrypoint.endswith("-- train clip --data s3://b/s --config job_files/mine.yaml --workdir "
                                       f"{tmp_path}")
        assert job.entrypoint.startswith("python -m cluster.job_entry ")
        assert job.runtime_env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}
    finally:
        import shutil

        shutil.rmtree(job.working_dir)
