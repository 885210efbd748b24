"""``tvp train`` stopped with SIGTERM (a scheduler preempting the job) and started again, as a user runs it.

The first start is stopped once its MLflow run holds a training loss, that
is once training has begun (the store is polled read-only; no fixed sleep).
It must checkpoint where it stopped, exit with 143 and leave the MLflow run
KILLED. The same command again must finish the same MLflow run (FINISHED,
``tvp.resumed`` = 1) from that checkpoint: with a loss logged every step, the
run's history is every step exactly once, from 1 to the last, across both
starts. Small settings keep both starts to about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import REPO, TVP

EPOCHS, CHECKPOINT_EVERY = 2, 4


def start_train(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``tvp train`` in a subprocess, its output in ``log`` (a pipe nobody reads could fill and stall it)."""
    return subprocess.Popen([*TVP, *args], cwd=REPO, env={**os.environ, **env}, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True)


def logged_loss_steps(db: Path) -> list[int]:
    """Steps with a training loss in the MLflow store, read without writing (rank 0 is the one writer)."""
    if not db.exists():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as store:
            return [s for (s,) in store.execute("SELECT step FROM metrics WHERE key = 'loss' ORDER BY step")]
    except sqlite3.OperationalError:  # the tables are not there yet, or the writer holds a lock
        return []


def wait_for_training(driver: subprocess.Popen, db: Path, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"tvp train exited early with {driver.returncode}:\n{log.read_text()[-3000:]}"
        if logged_loss_steps(db):
            return
        time.sleep(0.1)
    raise AssertionError(f"no training loss reached MLflow:\n{log.read_text()[-3000:]}")


def committed_checkpoint(storage: Path) -> dict:
    """The metrics of the latest checkpoint Ray Train committed for the run (what a restart resumes from)."""
    return json.loads((storage / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]["metrics"]


def test_sigterm_stops_tvp_train_killed_and_the_same_command_resumes_the_same_run(demo_run, tmp_path):
    db = tmp_path / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{db}"}
    args = ["train", "clip", "--data", demo_run["summary"]["shards_dir"], "--name", "n", "--workdir", str(tmp_path),
            "--set", f"train.epochs={EPOCHS}", "--set", f"train.checkpoint_every_steps={CHECKPOINT_EVERY}",
            "--set", "train.log_every=1", "--set", "tracking.registered_model=clip-sigterm"]

    first_log = tmp_path / "first.log"
    driver = start_train(args, env, first_log)
    try:
        wait_for_training(driver, db, first_log)
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=180)
    finally:
        if driver.poll() is None:
            driver.kill()
    out = first_log.read_text()
    assert driver.returncode == 143, out[-3000:]
    assert "start it again with the same name to resume" in out, out[-3000:]
    # Checkpointed just in time, at the last step it trained (an epoch's own checkpoint if that step ended one).
    stopped = committed_checkpoint(tmp_path / "ray_results" / "n")
    assert stopped["trigger"] in ("stop", "epoch") and stopped["step"] == logged_loss_steps(db)[-1], stopped

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"
    assert "tvp.resumed" not in run.data.tags

    second_log = tmp_path / "second.log"
    driver = start_train(args, env, second_log)
    try:
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    out = second_log.read_text()
    assert driver.returncode == 0, out[-3000:]
    assert f"({run.info.run_id}): registered clip-sigterm version 1" in out, out[-3000:]
    assert re.search(rf"resuming at epoch \d+, step {stopped['step']}\b", out), out[-3000:]

    (resumed,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["tvp.resumed"] == "1"
    final = committed_checkpoint(tmp_path / "ray_results" / "n")
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert stopped["step"] < final["step"]
    assert steps == list(range(1, final["step"] + 1))  # resumed where it stopped: no step lost, none trained twice
