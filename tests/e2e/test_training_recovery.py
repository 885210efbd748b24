"""Training that survives, on a multi-node Ray cluster with checkpoints in S3 (moto on loopback).

One combined run keeps the suite fast: a node drained for preemption (the
workers checkpoint just in time), its worker SIGKILLed and the node removed
while a new one joins; the driver SIGKILLed and started again; the driver
stopped with SIGTERM and started again. The per-step sample log proves
the resumed run reaches the same final step, skips no step, and replays only
steps taken after the last committed checkpoint, with exactly the same samples;
a graceful stop (SIGTERM) replays none.
"""

import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from safetensors.torch import load_file

from components.data.ingest.image_processing import ImageConfig
from components.data.ingest.image_text_stage import shard_image_text_table
from components.data.ingest.image_text_shard import IngestConfig
from components.data.loading.tokenizer import train_caption_tokenizer
from components.data.ingest.url_table import TableSpec
from components.models.clip import CLIPConfig, TextConfig
from components.models.vit import ViTConfig
from components.tasks.clip import TOKENIZER_FILE, ClipTask, ClipTaskConfig
from components.training.harness import train_in_processes
from tests.conftest import CLUSTER_ENV, REPO, create_bucket

EPOCHS, SHARDS, ROWS_PER_SHARD, MICRO, CHECKPOINT_EVERY = 3, 8, 64, 16, 4
STEPS_PER_EPOCH = (SHARDS // 2) * ROWS_PER_SHARD // MICRO  # per rank: 4 shards of 64 samples, 16 per step
BUCKET = "tvp-runs"
# Ray Train collects reports when it polls the workers; polling often narrows the window in which a
# checkpoint is written but not yet committed, and notices dead workers and drained nodes sooner.


def make_shards(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = {"url": [], "caption": []}
    for i in range(SHARDS * ROWS_PER_SHARD):
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "img" / f"{i}.png")
        rows["url"].append(f"img/{i}.png")
        rows["caption"].append(f"noise picture number {i % 7}")
    pq.write_table(pa.table(rows), tmp_path / "pairs.parquet")
    shard_image_text_table(TableSpec(str(tmp_path / "pairs.parquet")), tmp_path / "shards",
                           IngestConfig(ImageConfig(image_size=32)), ROWS_PER_SHARD)
    # The workers read their training data from object storage, as they would on a real cluster.
    pyarrow.fs.copy_files(str(tmp_path / "shards"), f"{BUCKET}/shards", destination_filesystem=s3())
    return f"s3://{BUCKET}/shards"


def write_spec(tmp_path: Path, shards: str, address: str) -> Path:
    tokenizer = train_caption_tokenizer([f"noise picture number {i}" for i in range(7)] * 5, vocab_size=300)
    model = CLIPConfig(embed_dim=32, vision=ViTConfig(image_size=32, patch_size=4, width=64, layers=2, heads=2),
                       text=TextConfig(vocab_size=300, context_length=8, width=32, layers=1, heads=2))
    task = ClipTask(ClipTaskConfig(model=model), {TOKENIZER_FILE: tokenizer.to_str()})
    spec = {
        "task": task.name, "task_config": task.config_dict(), "files": task.files,
        "train": {"epochs": EPOCHS, "batch_size": 2 * MICRO, "num_workers": 2, "cpus_per_worker": 1,
                  "checkpoint_every_steps": CHECKPOINT_EVERY, "sample_log_dir": str(tmp_path / "samples"),
                  "max_failures": 2, "shuffle_buffer": 32, "log_every": 1, "lr": 1e-3,
                  "placement_strategy": "SPREAD", "preemption_check_every_steps": 1},
        "shards": shards, "storage": f"s3://{BUCKET}", "run_name": "recovery", "address": address,
        "final_weights": str(tmp_path / "final.safetensors"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "recovery",
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def logged_steps(tmp_path: Path, rank: int) -> list[tuple[int, tuple[int, ...]]]:
    """(step, sample ids) per line of a rank's sample log, written after each step has trained."""
    path = tmp_path / "samples" / f"rank{rank}.log"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [(int(parts[1]), tuple(int(x) for x in parts[2:])) for parts in lines]


def starts(tmp_path: Path, rank: int = 0) -> list[int]:
    """The step each start of the rank's loop resumed from (0 for the first), from its sample log's marks."""
    path = tmp_path / "samples" / f"rank{rank}.log"
    if not path.exists():
        return []
    return [int(line.split()[-1]) for line in path.read_text().splitlines() if line.startswith("# start at step")]


@functools.cache
def s3() -> pyarrow.fs.FileSystem:
    # from_uri reads AWS_ENDPOINT_URL (set by the cluster fixture), as Ray does; S3FileSystem() would not.
    return pyarrow.fs.FileSystem.from_uri(f"s3://{BUCKET}")[0]


def committed() -> dict:
    """The metrics of the latest checkpoint Ray Train has committed (what a restart resumes from)."""
    try:
        with s3().open_input_stream(f"{BUCKET}/recovery/checkpoint_manager_snapshot.json") as f:
            return json.loads(f.read())["latest_checkpoint_result"]["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def committed_step() -> int:
    return int(committed().get("step", 0))


def restarts(tmp_path: Path) -> int:
    """How many worker groups resumed the run (rank 0's loop started again), whether or not they replayed steps."""
    return max(len(starts(tmp_path)) - 1, 0)


def last_logged_step(tmp_path: Path) -> int:
    """The last step both ranks have trained."""
    return min(max((s for s, _ in logged_steps(tmp_path, rank)), default=0) for rank in (0, 1))


def act_after_commit(tmp_path: Path, min_step: int, driver: subprocess.Popen, action) -> int:
    """Once a checkpoint at ``min_step`` or later is committed and training has gone past it, ``action()``;
    return the step of the latest committed checkpoint at that moment."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert driver.poll() is None, early_exit(driver)
        committed = committed_step()
        if committed >= min_step and last_logged_step(tmp_path) > committed:
            action()
            return committed
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {min_step} was committed")


def early_exit(driver: subprocess.Popen) -> str:
    """Why a wait ended with the driver gone: its exit code, the steps rank 0 logged, the end of its output."""
    tmp_path = driver.log_path.parent
    return (f"driver exited early with {driver.returncode}; rank 0 logged steps "
            f"{[s for s, _ in logged_steps(tmp_path, 0)]}; committed {committed()}; its output ends:\n"
            f"{driver.log_path.read_text()[-4000:]}")


def wait_until(condition, driver: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, early_exit(driver)
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def train_workers(nodes) -> dict[int, int]:
    """Train worker pid → the pid of its node's raylet (its parent), for workers on ``nodes`` only (another
    test's workers on the session's own head may still be shutting down)."""
    raylets = {raylet_pid(node) for node in nodes}
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout
    workers = {}
    for pid in out.split():
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        if parent in raylets:
            workers[int(pid)] = parent
    return workers


def raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def drain_for_preemption(address: str, node_id: str, deadline_s: int = 60) -> None:
    """What ``ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION`` (and the autoscaler on a spot reclaim) does."""
    import ray._raylet
    from ray.core.generated import autoscaler_pb2

    reason = autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION")
    deadline_ms = time.time_ns() // 1_000_000 + deadline_s * 1000
    accepted, message = ray._raylet.GcsClient(address=address).drain_node(node_id, reason, "spot reclaim", deadline_ms)
    assert accepted, message


def start_driver(spec: Path, log: Path) -> subprocess.Popen:
    """The driver in a subprocess, its output in ``log`` (a pipe nobody reads could fill and stall it)."""
    env = {**os.environ, **CLUSTER_ENV}
    driver = subprocess.Popen([sys.executable, "-m", "tests.e2e.train_driver", str(spec)], cwd=REPO, env=env,
                              stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    driver.log_path = log
    return driver


def test_failures_on_a_multi_node_cluster_resume_exactly_with_one_mlflow_run(multi_node_cluster, s3_env, monkeypatch,
                                                                             tmp_path):
    cluster, nodes = multi_node_cluster
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)  # this process reads the checkpoints too
    create_bucket(s3_env, BUCKET)
    spec = write_spec(tmp_path, make_shards(tmp_path), cluster.address)
    total = EPOCHS * STEPS_PER_EPOCH

    # A spot reclaim: the node of one worker is drained for preemption and the workers checkpoint at once;
    # then the worker on the reclaimed node is SIGKILLed and its node removed. Ray Train restarts the group
    # on the nodes left (the spare one included).
    def drain_a_node():
        workers = train_workers(nodes)
        assert len(set(workers.values())) == 2, "SPREAD should put the two workers on two nodes"
        worker, raylet = max(workers.items())
        node = next(n for n in nodes if raylet_pid(n) == raylet)
        drain_for_preemption(cluster.address, node.node_id)
        reclaimed.append((worker, node))

    reclaimed: list = []
    driver = start_driver(spec, tmp_path / "driver1.log")
    act_after_commit(tmp_path, CHECKPOINT_EVERY, driver, drain_a_node)
    wait_until(lambda: committed().get("trigger") == "preemption" and last_logged_step(tmp_path) > committed_step(),
               driver, "a just-in-time checkpoint on preemption")
    at_failure = [committed_step()]
    worker, node = reclaimed[0]
    os.kill(worker, signal.SIGKILL)
    cluster.remove_node(node, allow_graceful=False)
    nodes.remove(node)

    # Once the group on the new node has checkpointed again, the driver dies.
    wait_until(lambda: restarts(tmp_path) == 1, driver, "the worker group to resume on the spare node")
    at_failure.append(act_after_commit(tmp_path, committed_step() + 1, driver, lambda: driver.send_signal(signal.SIGKILL)))
    driver.wait()
    assert "a node of this run is being preempted: checkpointing at step" in (tmp_path / "driver1.log").read_text()

    driver = start_driver(spec, tmp_path / "driver2.log")  # same storage path and run name: resumes
    wait_until(lambda: restarts(tmp_path) == 2, driver, "the restarted driver to resume")
    act_after_commit(tmp_path, committed_step() + 1, driver, lambda: driver.send_signal(signal.SIGTERM))
    driver.wait(timeout=120)
    out = (tmp_path / "driver2.log").read_text()
    assert driver.returncode == 143 and "TRAINING STOPPED" in out, out[-3000:]
    stopped_at = last_logged_step(tmp_path)
    assert committed() == {**committed(), "step": stopped_at, "trigger": "stop"}  # checkpointed where it stopped

    driver = start_driver(spec, tmp_path / "driver3.log")
    driver.wait(timeout=300)
    out = (tmp_path / "driver3.log").read_text()
    assert driver.returncode == 0 and "TRAINING DONE" in out, out[-3000:]

    for rank in (0, 1):
        steps = logged_steps(tmp_path, rank)
        first_seen: dict[int, tuple[int, ...]] = {}
        for step, ids in steps:
            assert first_seen.setdefault(step, ids) == ids, f"step {step} replayed with other samples"
        assert sorted(first_seen) == list(range(1, total + 1))  # every step, none skipped, none extra
        # Each hard failure resumes right after a checkpoint no older than the latest one committed before
        # it, so only steps taken after that checkpoint are read again; the graceful stop replays nothing.
        resumed_from = starts(tmp_path, rank)
        assert resumed_from[0] == 0 and len(resumed_from) == 4, (resumed_from, at_failure)
        for resume, last_committed in zip(resumed_from[1:3], at_failure):
            assert resume >= last_committed, (resumed_from, at_failure)
        assert resumed_from[3] == stopped_at and [s for s, _ in steps].count(stopped_at + 1) == 1
        assert all(len(ids) == MICRO for ids in first_seen.values())
        epoch_one = {i for s in range(1, STEPS_PER_EPOCH + 1) for i in first_seen[s]}
        assert len(epoch_one) == STEPS_PER_EPOCH * MICRO  # no sample twice within an epoch

    spec_data = json.loads(spec.read_text())
    client = MlflowClient(spec_data["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("recovery").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["tvp.resumed"] == "2"  # two driver restarts
    logged = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")})
    assert logged == list(range(1, total + 1))
    metrics = runs[0].data.metrics
    assert 0 <= metrics["data_wait_fraction"] <= 1 and metrics["tokens_per_s"] > 0 and metrics["samples_per_s"] > 0
    assert metrics["peak_memory_mb_worker0"] > 50 and metrics["peak_memory_mb_worker1"] > 50
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100 and metrics["system/process_memory_rss_megabytes"] > 50
    # Every worker group's log, the killed ones' included, is archived to the run from the run's storage.
    archived = client.list_artifacts(runs[0].info.run_id, "worker_logs")
    assert len(archived) >= 6, [a.path for a in archived]
    texts = [Path(client.download_artifacts(runs[0].info.run_id, a.path, str(tmp_path))).read_text() for a in archived]
    assert sum("resuming at epoch" in text for text in texts) >= 3

    with s3().open_input_stream(f"{BUCKET}/recovery/checkpoint_manager_snapshot.json") as f:
        snapshot = json.loads(f.read())
    kept = [result["metrics"]["step"] for result in snapshot["checkpoint_results"]]
    assert total in kept and len(kept) <= 2  # the latest and the best by train_loss

    # The other side of exactness: the killed, drained, restarted and stopped run ends with the weights of
    # an uninterrupted run of the same spec (two local gloo processes running the same loop). A resume from
    # anywhere but the committed position, or a step trained twice or never, would change them.
    uninterrupted = {key: spec_data[key] for key in ("task", "task_config", "files")}
    uninterrupted["train"] = {k: v for k, v in spec_data["train"].items() if k != "sample_log_dir"}
    uninterrupted["sources"] = [[spec_data["shards"], 1.0]]
    reference = train_in_processes(uninterrupted, tmp_path / "uninterrupted", world=2)
    resumed, expected = load_file(spec_data["final_weights"]), load_file(str(reference / "model.safetensors"))
    assert resumed.keys() == expected.keys()
    for key in expected:
        difference = (resumed[key] - expected[key]).abs().max().item()
        assert difference <= 1e-6, f"{key} differs by up to {difference}"
