"""The team server, run for real: ``mlflow server`` on PostgreSQL, with its artifacts in S3 behind it, and
basic authentication.

Everything is on loopback: PostgreSQL from Debian's packages (``.ci/run``
installs it) in a temporary cluster, run as its own user since it refuses
root; moto's S3 server (``s3_env``); the MLflow server proxies the artifacts
(``--serve-artifacts``), so clients hold no storage credentials, and asks for
a user and password. The admin password is random and reaches the server only
through its environment, never a file.

A toy model is trained in this process (the one training loop, without Ray:
a Ray Train run would add ~30 s and test nothing more here) into a run on the
server, with the credentials in MLFLOW_TRACKING_USERNAME/PASSWORD, registered,
and loaded back through ``models:/NAME@latest``. A wrong password is refused
by ``tvp`` in one line that names the server and never shows the password.
About 40 s, most of it the server's start.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import boto3
import pytest
import ray.train
import torch

from cluster.mlflow_server import MlflowServer
from components.tasks.registry import load_task_and_model, register_task
from components.tracking.registry import download_registered_checkpoint
from components.tracking.tracking_store import TrackingUnavailable, check_tracking_server
from components.training.harness import train_in_process
from pipelines.run_steps import open_run, register_step
from tests.conftest import create_bucket, run_tvp
from tests.tasks.toy_task import write_toy_shards

register_task("toy", "tests.tasks.toy_task:ToyTask")
BUCKET = "team-artifacts"
ADMIN = "admin"
MODEL = "toy-team"
AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin(name: str) -> str:
    """A PostgreSQL program from Debian's package (its newest major version): Debian keeps them off PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    assert found, f"no PostgreSQL {name}: .ci/run installs Debian's postgresql package"
    return found[-1]


def as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user the package created."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, loopback only); yields its URI."""
    folder = Path(tempfile.mkdtemp(prefix="tvp-postgres-"))  # in /tmp: pytest's own folders are root's alone
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port = folder / "data", free_port()
    run = dict(check=True, capture_output=True, text=True, timeout=120)
    try:
        subprocess.run(as_postgres(postgres_bin("initdb"), "-D", str(data), "-U", "tvp", "--auth=trust"), **run)
        subprocess.run(as_postgres(postgres_bin("pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-w",
                                   "-o", f"-h 127.0.0.1 -p {port} -k {folder}", "start"), **run)
        subprocess.run(as_postgres(postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tvp",
                                   "mlflow"), **run)
        yield f"postgresql+psycopg2://tvp@127.0.0.1:{port}/mlflow"  # the driver cluster/mlflow deploys
    finally:
        subprocess.run(as_postgres(postgres_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
                       capture_output=True, timeout=60)  # fails harmlessly when it never started
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres, s3_env, tmp_path_factory):
    """``mlflow server`` with PostgreSQL, S3 artifacts behind it and basic auth; yields (url, admin password, log)."""
    folder = tmp_path_factory.mktemp("team_server")
    create_bucket(s3_env, BUCKET)
    config = folder / "basic_auth.ini"
    config.write_text("[mlflow]\n"
                      "default_permission = READ\n"
                      f"database_uri = sqlite:///{folder / 'auth.db'}\n"
                      f"admin_username = {ADMIN}\n"  # the password comes from the environment alone
                      "auth_cache_ttl_seconds = 60\n")  # a password is hashed once a minute, not per request
    password = secrets.token_urlsafe(16)
    env = {**s3_env, "MLFLOW_S3_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"],
           "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    options = ["--backend-store-uri", postgres, "--serve-artifacts", "--artifacts-destination", f"s3://{BUCKET}",
               "--app-name", "basic-auth", "--workers", "1"]
    with MlflowServer(options, free_port(), folder / "mlflow-server.log", env=env) as server:
        yield server.url, password, server.log_path


@pytest.fixture
def client_environment(monkeypatch):
    """This process as a team member's: no storage credentials, and MLflow's clients fail fast."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return monkeypatch


def toy_spec(shards: str, tracking_uri: str, run_id: str) -> dict:
    return {"task": "toy", "task_config": {"hidden": 8}, "files": {},
            "train": {"epochs": 2, "batch_size": 16, "lr": 0.02, "shuffle_buffer": 64, "loader_workers": 0,
                      "log_every": 1, "weight_decay": 0.0, "preemption_check_every_steps": 0},
            "sources": [[shards, 1.0]], "tracking": {"tracking_uri": tracking_uri, "run_id": run_id}}


def test_a_model_trained_against_the_team_server_is_registered_and_loads_back(team_server, s3_env, client_environment,
                                                                           tmp_path):
    url, password, server_log = team_server
    client_environment.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    client_environment.setenv("MLFLOW_TRACKING_PASSWORD", password)
    check_tracking_server(url)  # what tvp checks before a job: healthy, and it takes these credentials

    shards = write_toy_shards(tmp_path / "shards", 2, 32, seed=0)
    run = open_run(url, tmp_path, "team", "toy-on-the-team-server", {"train": {"epochs": 2}},
                   {"data_manifest_hash": "toy"})
    trained = train_in_process(toy_spec(shards, url, run.run_id), tmp_path / "checkpoints")
    final = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))[-1]
    registration = register_step(run, trained.loop.task, ray.train.Checkpoint.from_directory(str(final)), MODEL,
                                 {"train_loss": trained.final_metrics["train_loss"]})
    run.tracker.finish()

    # The run and its metrics are in PostgreSQL, behind the server; the version came from the run's logged model.
    client = run.tracker.client
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED" and len(client.get_metric_history(run.run_id, "loss")) >= 4
    assert [o.model_id for o in logged.outputs.model_outputs] == [registration.model_id]
    version = client.get_model_version(MODEL, registration.version)
    assert version.source == f"models:/{registration.model_id}" and version.run_id == run.run_id

    # Loaded back through the alias, with no storage credentials here: the server fetched it from S3.
    checkpoint = download_registered_checkpoint(f"models:/{MODEL}@latest", tmp_path / "loaded", url)
    _, model = load_task_and_model(checkpoint)
    for name, value in trained.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"], region_name=s3_env["AWS_DEFAULT_REGION"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert any(registration.model_id in k and k.endswith("model.safetensors") for k in keys), keys

    # The password went nowhere it could be read back: not the run, not the model, not the server's log.
    recorded = [*logged.data.params.values(), *logged.data.tags.values(), *version.tags.values()]
    assert not [v for v in recorded if password in v]
    assert password not in server_log.read_text(errors="replace")


def test_a_wrong_password_is_refused_in_one_line_that_names_the_server(team_server, client_environment):
    url, password, _ = team_server
    wrong = "not-" + password
    client_environment.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    client_environment.setenv("MLFLOW_TRACKING_PASSWORD", wrong)
    with pytest.raises(TrackingUnavailable) as refused:
        check_tracking_server(url)
    message = str(refused.value)
    assert url in message and "MLFLOW_TRACKING_PASSWORD" in message and "HTTP 401" in message
    assert wrong not in message and password not in message

    client_environment.delenv("MLFLOW_TRACKING_PASSWORD")  # no credentials at all: it says which to set
    with pytest.raises(TrackingUnavailable, match="asks for credentials .*: set MLFLOW_TRACKING_USERNAME"):
        check_tracking_server(url)

    # As a user meets it: a tvp command against the server stops at once with that line.
    result = run_tvp("promote", f"models:/{MODEL}@latest", "--metric", "mse",
                     env={"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": ADMIN,
                          "MLFLOW_TRACKING_PASSWORD": wrong}, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == f"tvp: error: {message}", result.stderr[-2000:]
    assert wrong not in result.stdout + result.stderr
