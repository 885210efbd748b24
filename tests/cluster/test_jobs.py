"""``tvp submit``, ``tvp jobs`` and ``tvp schedule`` against a real cluster (``ray start --head`` plus a worker
node, token auth).

One job ingests the demo's data as a new shard set under a data root; the
continued-pretraining pipeline (``clip-continue``) is then submitted, stopped
by ``tvp jobs stop`` while it trains, and submitted again under the same
pipeline run name, which resumes it: no step that finished runs again, and
training continues in its own MLflow run. The next run finds nothing new.
The scheduler's ticks then submit evaluate-and-promote jobs.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cluster.job_submission import JobError, prepare_job
from tests.cluster.ray_start_cluster import RayStartCluster
from tests.conftest import run_tvp


# Secrets the cluster and the client hold, as operators give them (environment); none may be written anywhere.
PLANTED = "planted-secret-7f3e9a1c"
SECRET_ENV = {"MLFLOW_TRACKING_PASSWORD": PLANTED, "AWS_SECRET_ACCESS_KEY": PLANTED, "RAY_TEST_API_TOKEN": PLANTED}


@pytest.fixture(scope="module")
def cluster():
    started = RayStartCluster(env=SECRET_ENV)
    yield started
    started.stop()


def tvp(cluster: RayStartCluster, *args: str, timeout: float = 600, **env: str | None):
    return run_tvp(*args, env={**cluster.client_env, "MLFLOW_TRACKING_URI": None, **env}, timeout=timeout)


def job_id(output: str) -> str:
    return re.search(r"submitted job (\S+) to", output).group(1)


def training_run(workdir: Path, name: str):
    """The training run named ``name`` (None before it exists) and a client of the work folder's store."""
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`tvp.run_name` = '{name}'")
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


@pytest.fixture(scope="module")
def workdir(demo_run, tmp_path_factory) -> Path:
    """The jobs' work folder, with a copy of the demo's MLflow store: its registered model is where continued
    pretraining starts while there is no champion, and the schedule test evaluates what the jobs register."""
    work = tmp_path_factory.mktemp("jobs") / "work"
    work.mkdir()
    shutil.copy(demo_run["workdir"] / "mlflow.db", work / "mlflow.db")
    return work


def test_continued_pretraining_jobs_stopped_while_training_resume_and_then_find_nothing_new(cluster, workdir,
                                                                                             demo_run):
    demo, model = demo_run["workdir"], demo_run["summary"]["registered_model"]
    arrivals = workdir.parent / "arrivals"
    # A job that ingests the demo's data: a shard set arrives under the data root.
    ingested = tvp(cluster, "submit", "--wait", "--", "tvp", "ingest", "image-text",
                   str(demo / "source" / "train.parquet"), "--output", str(arrivals / "day-1"), "--image-size", "32",
                   "--rows-per-shard", "256",
                   **SECRET_ENV)
    assert ingested.returncode == 0 and "samples from" in ingested.stdout, ingested.stdout[-3000:]
    (arrivals / "day-2").mkdir()  # a set still being written: no manifest yet
    params = ["--param", f"data_root={arrivals}", "--param", f"heldout={demo / 'shards' / 'heldout'}",
              "--param", f"model={model}", "--param", f"base=models:/{model}@latest", "--param", "epochs=2",
              "--param", "config=clip-finetune", "--param", "lineage=nightly"]
    command = ["--", "tvp", "run", "clip-continue", "--workdir", str(workdir), "--name", "nightly", *params]
    submitted = tvp(cluster, "submit", *command, **SECRET_ENV)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    first = job_id(submitted.stdout)

    def training_logged() -> bool:
        run, client = training_run(workdir, "nightly-train")
        return run is not None and bool(client.get_metric_history(run.info.run_id, "loss"))

    wait_until(training_logged, "the pipeline's training step to log a loss", cluster, first)
    stop = tvp(cluster, "jobs", "stop", first)
    assert stop.returncode == 0 and f"job {first}: stop requested" in stop.stdout
    wait_until(lambda: cluster.job_status(first) == "STOPPED", "the job to stop", cluster, first, timeout=120)
    logs = tvp(cluster, "jobs", "logs", first).stdout
    assert "step train was stopped; run the same command with --name nightly to resume from it" in logs, logs[-3000:]
    assert f"new: {arrivals / 'day-1'}" in logs and f"skipped: {arrivals / 'day-2'} has no manifest" in logs
    assert f"models:/{model}@champion names no registered version yet: starting from models:/{model}@latest" in logs
    stopped_run, client = training_run(workdir, "nightly-train")
    assert stopped_run.info.status == "KILLED"  # stopped after its checkpoint: resumable

    again = tvp(cluster, "submit", "--wait", *command, **SECRET_ENV)
    assert again.returncode == 0, (again.stdout[-4000:], again.stderr[-2000:])
    assert "select: finished in an earlier attempt, not run again" in again.stdout
    assert "promoted: " in again.stdout and f"job {job_id(again.stdout)} succeeded (exit code 0)" in again.stdout
    resumed_run, _ = training_run(workdir, "nightly-train")
    assert resumed_run.info.run_id == stopped_run.info.run_id  # one MLflow run for the training job
    assert resumed_run.info.status == "FINISHED" and resumed_run.data.tags["tvp.resumed"] == "1"
    arrived = json.loads((arrivals / "day-1" / "manifest.json").read_text())["content_hash"]
    assert resumed_run.data.tags["tvp.lineage"] == "nightly" and resumed_run.data.tags["data_manifest_hash"] == arrived
    pipelines = client.get_experiment_by_name("tvp-pipelines").experiment_id
    [pipeline] = client.search_runs([pipelines])
    tags = pipeline.data.tags
    assert pipeline.info.status == "FINISHED" and tags["tvp.step.train.attempts"] == "2"
    assert tags["tvp.step.select.attempts"] == "1" and tags["tvp.step.train.mlflow_run_id"] == resumed_run.info.run_id
    assert json.loads(tags["tvp.step.promote.outputs"])["promoted"] is True  # the first champion
    champion = client.get_model_version_by_alias(model, "champion")
    assert champion.run_id == resumed_run.info.run_id

    # The next tick finds nothing new: the lineage trained on day-1, day-2 is unfinished.
    nothing = run_tvp("run", "clip-continue", "--workdir", str(workdir), "--name", "nightly-2", *params,
                      env={"MLFLOW_TRACKING_URI": None})
    assert nothing.returncode == 0, nothing.stderr[-3000:]
    assert "0 new shard sets under" in nothing.stdout and "1 trained on already by lineage nightly" in nothing.stdout
    for step in ("train", "evaluate", "promote"):
        assert f"] {step}: skipped (" in nothing.stdout
    [second] = client.search_runs([pipelines], "tags.`tvp.run_name` = 'nightly-2'")
    assert second.data.tags["tvp.step.train.status"] == "SKIPPED"

    listed = tvp(cluster, "jobs", "list").stdout
    assert f"{first}  STOPPED" in listed and f"{job_id(again.stdout)}  SUCCEEDED" in listed

    # The planted secrets are nowhere: not in the jobs as the Jobs API shows them (entrypoint, runtime
    # environment, metadata, logs), not in the work folder (logs, MLflow store, artifacts, checkpoints), not in
    # the cluster's own session files.
    for job in (job_id(ingested.stdout), first, job_id(again.stdout)):
        shown = json.dumps(cluster._get(f"/api/jobs/{job}")) + cluster.job_log(job)
        assert PLANTED not in shown
    for folder in (workdir, Path(cluster.temp_dir)):
        holding = [str(p) for p in folder.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
        assert not holding, holding


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


def test_a_scheduler_killed_between_submitting_and_recording_neither_loses_nor_doubles_the_tick(cluster, workdir,
                                                                                                demo_run, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from cluster.schedule_store import ScheduleStore
    from tests.conftest import REPO, TVP

    store = f"sqlite:///{tmp_path / 'schedules.db'}"
    heldout = demo_run["workdir"] / "shards" / "heldout"
    model = demo_run["summary"]["registered_model"]
    added = tvp(cluster, "schedule", "add", "evals", "--cron", "*/2 * * * * *", "--store", store, "--",
                "tvp", "run", "clip-evaluate-promote", "--param", f"data={heldout}", "--param",
                f"model=models:/{model}@latest", "--workdir", str(workdir))
    assert added.returncode == 0 and "schedule evals added: first tick" in added.stdout, added.stderr
    env = {**os.environ, **cluster.client_env}
    env.pop("MLFLOW_TRACKING_URI", None)
    serve = [*TVP, "schedule", "serve", "--store", store]

    crashed = subprocess.run(serve, cwd=REPO, env={**env, "TVP_SCHEDULER_FAULT": "exit-after-submit"},
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    [lost] = list(ScheduleStore(store).ticks("evals"))
    assert lost.state == "SUBMITTING" and cluster.job_status(lost.submission_id) in ("PENDING", "RUNNING")

    scheduler = subprocess.Popen(serve, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    try:
        def settled() -> bool:
            ticks = {t.fire_time: t for t in ScheduleStore(store).ticks("evals")}
            return ticks[lost.fire_time].state == "SUCCEEDED" and any(t.state == "SKIPPED" for t in ticks.values())

        deadline = time.monotonic() + 240
        while not settled():  # the scheduler records the outcome within seconds of the job's end
            assert time.monotonic() < deadline and scheduler.poll() is None, cluster.job_log(lost.submission_id)
            time.sleep(1)
        paused = tvp(cluster, "schedule", "pause", "evals", "--store", store)
        assert paused.returncode == 0 and "schedule evals paused" in paused.stdout
    finally:
        scheduler.send_signal(signal.SIGTERM)
        output = scheduler.communicate(timeout=60)[0]
    assert scheduler.returncode == 0 and "scheduler stopped" in output, output[-3000:]
    assert f"finishing the tick due {lost.fire_time} that a stopped scheduler left unrecorded" in output

    ticks = list(ScheduleStore(store).ticks("evals"))
    recovered = next(t for t in ticks if t.fire_time == lost.fire_time)
    assert recovered.submission_id == lost.submission_id and recovered.mlflow_run_id  # the pipeline run it made
    skipped = [t for t in ticks if t.state == "SKIPPED"]
    assert all(f"job {lost.submission_id} of an earlier tick still runs" in t.detail for t in skipped[:1])
    # Every submitted tick is one job on the cluster, and every job of the schedule belongs to a tick.
    submitted = {t.submission_id for t in ticks if t.state not in ("SKIPPED", "REFUSED")}
    listed = tvp(cluster, "jobs", "list").stdout
    on_cluster = set(re.findall(r"^(tvp-evals-\S+)", listed, re.MULTILINE))
    assert on_cluster == submitted and lost.submission_id in on_cluster, (listed, ticks)
    history = tvp(cluster, "schedule", "history", "evals", "--store", store).stdout
    assert f"{lost.fire_time}  SUCCEEDED   {lost.submission_id}  MLflow run {recovered.mlflow_run_id}" in history
    listing = tvp(cluster, "schedule", "list", "--store", store).stdout
    assert listing.startswith("evals  */2 * * * * * (UTC)  paused  latest ")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.get_run(recovered.mlflow_run_id)
    assert run.info.run_name == lost.submission_id and run.data.tags["tvp.step.promote.status"] == "FINISHED"
    removed = tvp(cluster, "schedule", "remove", "evals", "--store", store)
    assert removed.returncode == 0 and tvp(cluster, "schedule", "list", "--store", store).stdout == ""
