"""Training that survives: a worker SIGKILLed mid-run and a driver killed and started again.

One combined run keeps the suite fast. The per-step sample log proves the
resumed run reaches the same final step, skips no step, and replays only
steps taken after the last checkpoint, with exactly the same samples.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient
from PIL import Image

from components.data.image_processing import ImageConfig
from components.data.image_text_stage import shard_image_text_table
from components.data.image_text_table import ImageTextTable
from components.data.tokenizer import train_caption_tokenizer
from components.models.clip import CLIPConfig, TextConfig
from components.models.vit import ViTConfig
from components.training.clip_task import TOKENIZER_FILE, ClipTask, ClipTaskConfig
from tests.conftest import REPO

EPOCHS, SHARDS, ROWS_PER_SHARD, MICRO, CHECKPOINT_EVERY = 2, 8, 64, 16, 4
STEPS_PER_EPOCH = (SHARDS // 2) * ROWS_PER_SHARD // MICRO  # per rank: 4 shards of 64 samples, 16 per step


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
    shard_image_text_table(ImageTextTable(str(tmp_path / "pairs.parquet")), tmp_path / "shards",
                           ImageConfig(image_size=32), ROWS_PER_SHARD)
    return tmp_path / "shards"


def write_spec(tmp_path: Path, shards: Path) -> Path:
    tokenizer = train_caption_tokenizer([f"noise picture number {i}" for i in range(7)] * 5, vocab_size=300)
    model = CLIPConfig(embed_dim=32, vision=ViTConfig(image_size=32, patch_size=4, width=64, layers=2, heads=2),
                       text=TextConfig(vocab_size=300, context_length=8, width=32, layers=1, heads=2))
    task = ClipTask(ClipTaskConfig(model=model), {TOKENIZER_FILE: tokenizer.to_str()})
    spec = {
        "task": task.name, "task_config": task.config_dict(), "files": task.files,
        "train": {"epochs": EPOCHS, "batch_size": 2 * MICRO, "num_workers": 2, "cpus_per_worker": 1,
                  "checkpoint_every_steps": CHECKPOINT_EVERY, "sample_log_dir": str(tmp_path / "samples"),
                  "max_failures": 2, "shuffle_buffer": 32, "log_every": 1, "lr": 1e-3},
        "shards": str(shards), "storage": str(tmp_path / "storage"), "run_name": "recovery",
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "recovery",
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def logged_steps(tmp_path: Path, rank: int) -> list[tuple[int, tuple[int, ...]]]:
    path = tmp_path / "samples" / f"rank{rank}.log"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(int(parts[1]), tuple(int(x) for x in parts[2:])) for parts in lines]


def committed_step(tmp_path: Path) -> int:
    """The step of the latest checkpoint Ray Train has committed (what a restart resumes from)."""
    try:
        snapshot = json.loads((tmp_path / "storage" / "recovery" / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def kill_after_commit(tmp_path: Path, min_step: int, driver: subprocess.Popen, kill) -> int:
    """Once a checkpoint at ``min_step`` or later is committed and training has gone past it, ``kill()``;
    return the step of the latest committed checkpoint at that moment."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"driver exited early:\n{driver.stdout.read()[-3000:]}"
        committed = committed_step(tmp_path)
        logged = max((s for s, _ in logged_steps(tmp_path, 0)), default=0)
        if committed >= min_step and logged > committed:
            kill()
            return committed
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint at step {min_step} was committed")


def train_worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "RayTrainWorker"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def start_driver(spec: Path) -> subprocess.Popen:
    # Ray Train collects reports when it polls the workers; polling often narrows the window in which a
    # checkpoint is written but not yet committed, and notices the dead worker sooner.
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    return subprocess.Popen([sys.executable, "-m", "tests.e2e.train_driver", str(spec)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_worker_and_driver_failures_resume_exactly_with_one_mlflow_run(ray_address, tmp_path):
    spec = write_spec(tmp_path, make_shards(tmp_path))
    total = EPOCHS * STEPS_PER_EPOCH

    def kill_a_worker():
        workers = train_worker_pids()
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)  # Ray Train restarts the group from the committed checkpoint

    driver = start_driver(spec)
    committed = [kill_after_commit(tmp_path, CHECKPOINT_EVERY, driver, kill_a_worker)]
    committed.append(kill_after_commit(tmp_path, STEPS_PER_EPOCH + CHECKPOINT_EVERY, driver,
                                       lambda: driver.send_signal(signal.SIGKILL)))  # then the driver dies
    driver.wait()

    driver = start_driver(spec)  # same storage path and run name: resumes
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0 and "TRAINING DONE" in out, out[-3000:]

    for rank in (0, 1):
        steps = logged_steps(tmp_path, rank)
        first_seen: dict[int, tuple[int, ...]] = {}
        for step, ids in steps:
            assert first_seen.setdefault(step, ids) == ids, f"step {step} replayed with other samples"
        assert sorted(first_seen) == list(range(1, total + 1))  # every step, none skipped, none extra
        # Each restart resumes right after a checkpoint no older than the latest one committed before the
        # failure, so only steps taken after that checkpoint are read again.
        resumed_after = [step - 1 for (prev, _), (step, _) in zip(steps, steps[1:]) if step <= prev]
        assert len(resumed_after) == 2, resumed_after
        for resume, last_committed in zip(resumed_after, committed):
            assert resume >= last_committed and resume % CHECKPOINT_EVERY == 0, (resumed_after, committed)
        assert all(len(ids) == MICRO for ids in first_seen.values())
        epoch_one = {i for s in range(1, STEPS_PER_EPOCH + 1) for i in first_seen[s]}
        assert len(epoch_one) == STEPS_PER_EPOCH * MICRO  # no sample twice within an epoch

    spec_data = json.loads(spec.read_text())
    client = MlflowClient(spec_data["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("recovery").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["tvp.resumed"] == "1"
    logged = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")})
    assert logged == list(range(1, total + 1))
    metrics = runs[0].data.metrics
    assert 0 <= metrics["data_wait_fraction"] <= 1 and metrics["tokens_per_s"] > 0 and metrics["samples_per_s"] > 0
    assert metrics["peak_memory_mb_worker0"] > 50 and metrics["peak_memory_mb_worker1"] > 50

    snapshot = json.loads((tmp_path / "storage" / "recovery" / "checkpoint_manager_snapshot.json").read_text())
    kept = [result["metrics"]["step"] for result in snapshot["checkpoint_results"]]
    assert total in kept and len(kept) <= 2  # the latest and the best by train_loss
