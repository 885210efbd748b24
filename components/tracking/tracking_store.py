"""Where runs are tracked: a server named by MLFLOW_TRACKING_URI, or a SQLite store in the work directory.

The MLflow client retries an unreachable server for minutes by default, so
retries and timeouts are lowered and a server is probed once up front:
a missing server, or one that refuses the credentials in the environment
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN),
is reported within seconds, in one line that never shows the secret.
"""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def artifact_location(tracking_uri: str, workdir: str | Path) -> str | None:
    """Where new experiments keep artifacts: the work directory's folder beside a local store, else the
    server's choice (None)."""
    return default_artifact_location(workdir) if is_local_store(tracking_uri) else None


def is_local_store(uri: str) -> bool:
    """True for stores only this machine sees (SQLite files, plain paths)."""
    return not uri.startswith(("http://", "https://", "databricks", "postgresql", "mysql", "mssql"))


@contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` for a call that reads only that one.

    MLflow's model logging, and its registry store resolving a ``models:/<model_id>`` source, take no
    tracking URI of their own. MLflow mirrors the URI into MLFLOW_TRACKING_URI and clears the variable
    when it restores an unset URI, so the variable is put back as it was too.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def configure_fast_failure() -> None:
    for key, value in FAST_FAILURE_ENV.items():
        os.environ.setdefault(key, value)


def _credential_headers() -> dict[str, str]:
    """The Authorization header the MLflow client sends, from the same environment variables it reads."""
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if username and password:
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    if token:
        return {"Authorization": f"Bearer {token}"}
    return {}


def _refusal(uri: str, code: int) -> str:
    username = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if username and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        given = f"the username {username!r} and password (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        given = "the token (MLFLOW_TRACKING_TOKEN)"
    else:
        return (f"MLflow tracking server {uri} asks for credentials (HTTP {code}): set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD")
    return f"MLflow tracking server {uri} refused {given} with HTTP {code}: check them"


def _http_status(uri: str, url: str, headers: dict[str, str], timeout: float) -> int:
    """The HTTP status of a GET of ``url`` on server ``uri``; ``TrackingUnavailable`` when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable: {reason}") from exc


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Raise ``TrackingUnavailable`` unless an HTTP tracking server is healthy and accepts our credentials.

    The health check needs no credentials (MLflow's authentication leaves it open), so a one-result
    experiment search follows, with the credentials the client would send.
    """
    if not uri.startswith(("http://", "https://")):
        return
    base = uri.rstrip("/")
    health = _http_status(uri, base + "/health", {}, timeout)
    if health != 200:
        raise TrackingUnavailable(f"MLflow tracking server {uri} answered its health check with HTTP {health}")
    search = _http_status(uri, base + "/api/2.0/mlflow/experiments/search?max_results=1", _credential_headers(),
                          timeout)
    if search in (401, 403):
        raise TrackingUnavailable(_refusal(uri, search))
    if search != 200:
        raise TrackingUnavailable(f"MLflow tracking server {uri} answered an experiment search with HTTP {search}")
