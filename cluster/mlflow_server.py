"""An ``mlflow server`` process: started on loopback unless told otherwise, waited for, stopped with its children.

``tvp ui`` runs one on a work directory's store; the tests run team servers
(PostgreSQL, object storage, authentication) the same way. The server starts
in its own session, so stopping it reaches the uvicorn workers and job runner
it starts: ending the ``mlflow`` parent alone would leave them holding the port.
Its output goes to a log file, which an error names.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from components.errors import TvpError

LOOPBACK = "127.0.0.1"


class MlflowServerError(TvpError, RuntimeError):
    pass


class MlflowServer:
    """``mlflow server OPTIONS --host HOST --port PORT``; ``url`` is where clients reach it."""

    def __init__(self, options: Sequence[str], port: int, log_path: str | Path, host: str = LOOPBACK,
                 env: Mapping[str, str] | None = None) -> None:
        self.host, self.port, self.log_path = host, port, Path(log_path)
        self.command = [sys.executable, "-m", "mlflow", "server", *options, "--host", host, "--port", str(port)]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        # A server listening on every address is still reached here through loopback.
        host = LOOPBACK if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 120.0) -> "MlflowServer":
        """Start the server and return once it answers its health check (``MlflowServerError`` if it never does)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            env=self.env, start_new_session=True)
        deadline = time.monotonic() + timeout  # a loaded 2-core machine takes 10-30 s to start it
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise MlflowServerError(f"mlflow server exited with code {self.process.returncode} before it "
                                        f"answered: {self._last_log_line()} (log: {self.log_path})")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    response.read()
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise MlflowServerError(f"mlflow server did not answer at {self.url} within {timeout:.0f} s "
                                f"(log: {self.log_path})")

    def stop(self, timeout: float = 30.0) -> None:
        """End the server and everything it started: politely, then by force."""
        if self.process is None or self.process.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # workers that outlived their parent
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        assert self.process is not None, "start() first"
        return self.process.wait()

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _last_log_line(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no output"
        return lines[-1].strip() if lines else "no output"
