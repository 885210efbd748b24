"""A Ray cluster as operators start one: ``ray start --head`` plus a worker node, each a ``--block`` process.

Both nodes stay on loopback: the head announces 127.0.0.2 and the worker
127.0.0.3 (Ray would swap 127.0.0.1 for the machine's own address, and its
single-machine switch refuses a second node), the dashboard and Jobs API
listen on 127.0.0.1, and token authentication is on, as on a real cluster.
Ray's files go to a private folder, so the machine's record of "the current
cluster" is left alone. Stopping sends SIGTERM to the two ``ray start``
processes (never ``ray stop``, which would end every Ray instance here).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayStartCluster:
    def __init__(self, head_cpus: int = 4, worker_cpus: int = 2, env: dict[str, str] | None = None):
        self.token = secrets.token_hex(32)
        self.temp_dir = tempfile.mkdtemp(prefix="ray-jobs-", dir="/tmp")  # short: Ray's socket paths must fit
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.log_dir = Path(tempfile.mkdtemp(prefix="ray-start-logs-"))
        bin_dir = str(Path(sys.executable).parent)
        base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        # What the operator sets on the cluster: token auth, no usage reports, and time for a stopped job's
        # training to checkpoint before Ray's SIGKILL follows its SIGTERM (3 s by default).
        self.env = {**base, "PATH": f"{bin_dir}:{base.get('PATH', '')}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0", "RAY_JOB_STOP_WAIT_TIME_S": "60",
                    **(env or {})}
        ray = str(Path(bin_dir) / "ray")
        self.head = self._start("head", [
            ray, "start", "--head", "--block", "--node-ip-address", HEAD_IP, "--port", str(self.gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--dashboard-agent-listen-port", str(free_port()), "--num-cpus", str(head_cpus),
            "--temp-dir", self.temp_dir])
        self._wait_for(lambda: self._answers(), "the head's dashboard")
        self.worker = self._start("worker", [
            ray, "start", "--block", "--address", f"{HEAD_IP}:{self.gcs_port}", "--node-ip-address", WORKER_IP,
            "--dashboard-agent-listen-port", str(free_port()), "--num-cpus", str(worker_cpus)])
        self._wait_for(lambda: self.alive_nodes() == 2, "both nodes")

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("w")
        return subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def _answers(self) -> bool:
        request = urllib.request.Request(f"{self.dashboard}/api/version",
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=2):
                return True
        except OSError:
            return False

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.dashboard}{path}", headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> int:
        try:
            summary = self._get("/nodes?view=summary")["data"]["summary"]
        except (OSError, KeyError, ValueError):
            return 0
        return sum(1 for node in summary if node.get("raylet", {}).get("state") == "ALIVE")

    def job_status(self, submission_id: str) -> str:
        """The job's status as the Jobs API's REST interface gives it (no client process needed)."""
        return self._get(f"/api/jobs/{submission_id}")["status"]

    def job_log(self, submission_id: str) -> str:
        return self._get(f"/api/jobs/{submission_id}/logs")["logs"]

    def _wait_for(self, condition, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in (self.head, getattr(self, "worker", None)):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"ray start exited while waiting for {what}: see {self.log_dir}")
            if condition():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}: see {self.log_dir}")

    @property
    def client_env(self) -> dict[str, str]:
        """What a client of this cluster needs: the Jobs API address and the token."""
        return {"RAY_ADDRESS": self.dashboard, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def stop(self) -> None:
        # SIGTERM to ``ray start`` alone: it stops its node's processes in order, within seconds when the
        # head is idle; a head that ran jobs can take half a minute, and a throwaway cluster need not wait.
        for process in (self.worker, self.head):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
