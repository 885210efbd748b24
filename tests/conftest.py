"""The harness every test shares: one local Ray head on loopback, and one small demo run.

The Ray head starts once per test session; subprocess CLIs reach it through
RAY_ADDRESS. ``demo_run`` runs ``tvp demo`` once, as a user would, and hands
its work directory and summary to every test that needs trained artefacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.loopback import use_loopback_only

use_loopback_only()  # before anything imports ray: the session's head and every CLI it starts stay on 127.0.0.1

REPO = Path(__file__).resolve().parents[1]
TVP = [sys.executable, "-m", "pipelines.cli"]


@pytest.fixture(scope="session")
def ray_address():
    """Start the session's Ray head (4 logical CPUs on 2 cores, loopback only); yield its address."""
    import ray

    from cluster.ray_cluster import connect

    os.environ.pop("RAY_ADDRESS", None)
    address = connect(num_cpus=4)
    os.environ["RAY_ADDRESS"] = address  # subprocess CLIs attach here
    yield address
    ray.shutdown()
    os.environ.pop("RAY_ADDRESS", None)


def run_tvp(*args: str, env: dict[str, str | None] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the ``tvp`` CLI in a subprocess, as a user would; ``env`` values of None unset a variable."""
    full_env = {**os.environ, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(
        [*TVP, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def demo_run(ray_address, tmp_path_factory):
    """``tvp demo`` with the tiny preset, run once against the session's Ray head."""
    workdir = tmp_path_factory.mktemp("demo")
    result = run_tvp("demo", "--workdir", str(workdir), env={"RAY_ADDRESS": ray_address, "MLFLOW_TRACKING_URI": None})
    assert result.returncode == 0, f"tvp demo failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    summary = json.loads((workdir / "summary.json").read_text())
    return {"workdir": workdir, "summary": summary, "stdout": result.stdout}


@pytest.fixture(scope="session")
def s3_env():
    """An S3-compatible server (moto) on loopback; yields the environment that points AWS clients at it.

    pyarrow, boto3 and Ray all read ``AWS_ENDPOINT_URL``, so ``s3://`` paths reach this server and
    nothing leaves the machine.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    server.stop()


def create_bucket(env: dict[str, str], name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"]
                 ).create_bucket(Bucket=name)
