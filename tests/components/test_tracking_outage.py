"""A tracking server that goes away mid-run: metrics are buffered and delivered when it returns."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from components.tracking.run_tracker import RunTracker
from components.tracking.tracking_store import TrackingUnavailable, check_tracking_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp_path, port) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: uvicorn and the job runner end with it (see kill)
    )
    deadline = time.monotonic() + 120  # only against hanging: a loaded machine takes long to start it
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return server
        except OSError:
            time.sleep(0.3)
    kill(server)
    raise AssertionError("mlflow server did not start")


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def kill(server: subprocess.Popen) -> None:
    """The server dies at once, with every process it started (killing the parent alone orphans uvicorn)."""
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait(timeout=30)


def test_metrics_logged_while_the_server_is_down_arrive_after_it_returns(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(tmp_path, port)
    try:
        tracker = RunTracker.create(uri, "outage", "run")
        tracker.log_metrics({"loss": 1.0}, step=1)
        stop(server)
        with pytest.raises(TrackingUnavailable):
            check_tracking_server(uri, timeout=1)
        started = time.monotonic()
        tracker.log_metrics({"loss": 0.9}, step=2)  # buffered, does not raise
        tracker.log_metrics({"loss": 0.8}, step=3)
        assert time.monotonic() - started < 15 and tracker.pending == 2
        server = start_server(tmp_path, port)
        tracker.log_metrics({"loss": 0.7}, step=4)  # delivers the backlog first
        assert tracker.pending == 0
        assert tracker.finish() == {"undelivered": 0, "delivered_late": 2}
        history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7)]
    finally:
        stop(server)
