"""Where runs are tracked: a server named by MLFLOW_TRACKING_URI, or a SQLite store in the work directory.

The MLflow client retries an unreachable server for minutes by default, so
retries and timeouts are lowered and a server is probed once up front:
a missing server is reported within seconds.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from components.errors import TvpError

# Few, short retries: a dead server should fail a job in seconds, not minutes.
FAST_FAILURE_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


class TrackingUnavailable(TvpError, RuntimeError):
    pass


def resolve_tracking_uri(workdir: str | Path) -> str:
    """MLFLOW_TRACKING_URI if set, else a SQLite store ``mlflow.db`` in ``workdir``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(workdir).resolve() / 'mlflow.db'}"


def default_artifact_location(workdir: str | Path) -> str:
    """Artifact folder used with the embedded SQLite store."""
    return (Path(workdir).resolve() / "mlartifacts").as_uri()


def is_local_store(uri: str) -> bool:
    """True for stores only this machine sees (SQLite files, plain paths)."""
    return not uri.startswith(("http://", "https://", "databricks", "postgresql", "mysql", "mssql"))


def configure_fast_failure() -> None:
    for key, value in FAST_FAILURE_ENV.items():
        os.environ.setdefault(key, value)


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Raise ``TrackingUnavailable`` unless an HTTP tracking server answers its health check."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        raise TrackingUnavailable(f"MLflow tracking server {uri} answered its health check with HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable: {reason}") from exc
