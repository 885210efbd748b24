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
    return {"workdir": workdir, "summary": summary, "stdout": result.stdout, "stderr": result.stderr}


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


# Ray Train reads these in the cluster's processes: the recovery test wants preemption seen within 0.2 s.
CLUSTER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.2"}


@pytest.fixture(scope="session")
def multi_node_cluster(ray_address, s3_env):
    """A head with no CPUs (drivers only) and three 2-CPU worker nodes on loopback; every node sees S3.

    Shared, since starting it costs about 10 s: the multi-node ingestion test uses it as it is, then the
    training recovery test (it sorts last) drains and removes a node. This process stays connected to
    the session's own Ray head.
    """
    from ray.cluster_utils import Cluster

    saved = {key: os.environ.get(key) for key in {**s3_env, **CLUSTER_ENV}}
    os.environ.update({**s3_env, **CLUSTER_ENV})  # inherited by every node's processes, and only theirs
    try:
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True,
                                                                "dashboard_host": "127.0.0.1", "dashboard_port": 0})
        workers = [cluster.add_node(num_cpus=2) for _ in range(3)]
        cluster.wait_for_nodes()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    yield cluster, workers
    # Not cluster.shutdown(): it also resets this process's Ray state, which the session's own head still needs.
    for node in [*cluster.worker_nodes, cluster.head_node]:
        cluster.remove_node(node, allow_graceful=False)


@pytest.fixture(scope="session")
def wiki_articles(ray_address, tmp_path_factory):
    """The embedded Wikipedia sample ingested once (Ray tasks on the session's head) and split by article
    (``tvp split-articles``): document sets ``train``/``heldout`` and the category-labelled sentence tables."""
    from components.data.ingest.wikipedia_sample import sample_dump
    from components.data.ingest.wikipedia_stage import WikipediaDumpReader, shard_wikipedia_dump
    from pipelines.article_splits import split_articles

    root = tmp_path_factory.mktemp("wiki")
    shard_wikipedia_dump(WikipediaDumpReader(sample_dump()), root / "docs", 50)
    return split_articles(str(root / "docs"), root / "split")


@pytest.fixture(scope="session")
def digit_images(ray_address, tmp_path_factory):
    """The embedded digits as a class-per-folder tree, ingested once (``tvp ingest imagefolder --sample
    --image-size 32``, Ray tasks on the session's head): shard sets ``train`` (1,438) and ``heldout`` (359)."""
    from components.data.ingest.digits_image_folder import write_digits_folder
    from components.data.ingest.image_folder_shard import ImageFolderConfig
    from components.data.ingest.image_processing import ImageConfig
    from pipelines.ingest_imagefolder import ingest_image_folder, open_image_folders

    root = tmp_path_factory.mktemp("digits")
    inputs = open_image_folders(write_digits_folder(str(root / "images")), heldout_fraction=0.2)
    ingest_image_folder(inputs, root, ImageFolderConfig(ImageConfig(image_size=32)), 200, echo=lambda line: None)
    return root


@pytest.fixture(scope="session")
def digit_scenes(ray_address, tmp_path_factory):
    """The embedded digit scenes ingested once (``tvp ingest coco --sample``, Ray tasks on the session's head):
    detection shard sets ``train`` (1,000 scenes) and ``heldout`` (200)."""
    from components.data.ingest.coco_shard import CocoConfig
    from pipelines.ingest_coco import ingest_coco, open_sample, set_location

    root = tmp_path_factory.mktemp("scenes")
    readers = open_sample(root)
    ingest_coco(readers, {name: set_location(root, name) for name in readers}, CocoConfig(), 200,
                echo=lambda line: None)
    return root
