"""Sending a ``tvp`` command to a Ray cluster as a job (the Ray Jobs API), and managing jobs there.

What a job carries, and what it never does:
- the project's code (``components/``, ``pipelines/``, ``cluster/`` and
  ``pyproject.toml``) and the config and pipeline files the command names,
  copied into a fresh folder that becomes the job's ``working_dir``: never a
  virtual environment, a work directory or shard data;
- ``MLFLOW_TRACKING_URI`` (without credentials) as the only environment
  variable: the Jobs API shows a job's runtime environment and entrypoint to
  anyone who can list jobs, so secrets (tracking passwords, storage keys) come
  from the cluster's own environment or Kubernetes secrets, and a command
  whose arguments look like one is refused.

A cluster with nodes on other machines than this one cannot see this
machine's files: a local tracking store (the SQLite default included) or a
local folder among the arguments is refused before submission, with what to
use instead. A cluster wholly on this machine runs the command in the folder
it was typed in, so relative paths mean what they mean here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlparse

from cluster.ray_cluster import is_this_machine
from components.errors import TvpError
from components.tracking.redaction import is_secret_key, redact_value
from components.tracking.tracking_store import is_local_store

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("components", "pipelines", "cluster", "pyproject.toml")
SHIPPED_FILES_DIR = "job_files"  # where named config files go inside the job's working_dir
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
FORWARDED_ENV = ("MLFLOW_TRACKING_URI",)
DASHBOARD_PORT = 8265
STATUS_EXIT_CODES = {"SUCCEEDED": 0, "STOPPED": 143}
NOT_JOBS = ("submit", "jobs", "schedule", "ui")  # they manage jobs or serve until stopped: nothing to run there


class JobError(TvpError, RuntimeError):
    pass


def client_version() -> str:
    try:
        return metadata.version("tvp")
    except metadata.PackageNotFoundError:
        return "unknown"


def dashboard_address(address: str | None) -> str:
    """The Jobs API address: ``--address``, else $RAY_ADDRESS, as ``ray job submit`` takes them."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise JobError("no Ray cluster named: give --address http://HEAD:8265 (the dashboard) or set RAY_ADDRESS")
    if "://" not in address:
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
        raise JobError(f"{address} is not a Jobs API address: jobs go to the head's dashboard, "
                       f"e.g. http://{host}:{DASHBOARD_PORT}")
    return address.rstrip("/")


def job_client(address: str | None):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    try:
        return JobSubmissionClient(url)
    except AuthenticationError:
        raise JobError(f"the Ray cluster at {url} refused this client's token: set RAY_AUTH_TOKEN (or "
                       "RAY_AUTH_TOKEN_PATH) to the cluster's token") from None
    except (ConnectionError, RuntimeError, ValueError) as exc:  # Ray says "Failed to connect to Ray at address"
        raise JobError(f"no Ray Jobs API answers at {url}: {str(exc).splitlines()[0]}") from None


# -- what the cluster can see ----------------------------------------------------------------------------------
def cluster_on_this_machine(address: str) -> bool:
    """True when the head is reached on this machine and every alive node runs on it."""
    if not is_this_machine(urlparse(address).hostname or ""):
        return False
    from ray.util.state import list_nodes

    nodes = list_nodes(address=address, filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
    return all(is_this_machine(node.node_ip) for node in nodes)


# -- the job ---------------------------------------------------------------------------------------------------
@dataclass
class PreparedJob:
    entrypoint: str
    runtime_env: dict
    working_dir: Path
    notes: list[str]


def _looks_secret(arg: str) -> bool:
    key, sep, value = arg.partition("=")
    if sep and value and is_secret_key(key.split(".")[-1].lstrip("-")):
        return True
    return redact_value(arg) != arg  # a URL with a password in it


NOT_PATHS = ("--workdir", "--name")  # values that name places on the cluster's side, or nothing on disk


def _local_path(arg: str) -> tuple[str, Path] | None:
    """(prefix, path) when an argument, or the value of a NAME=VALUE argument, names an existing local path."""
    key, sep, value = arg.partition("=")
    for prefix, candidate in (("", arg), (key + sep, value) if sep else ("", "")):
        if candidate and "://" not in candidate and not candidate.startswith("-") and Path(candidate).exists():
            return prefix, Path(candidate)
    return None


def _ship_files(args: list[str], working_dir: Path) -> tuple[list[str], list[str]]:
    """For a cluster on other machines: config files the arguments name are copied into the job (and the
    arguments pointed at the copies); any other local path is refused."""
    shipped, notes = [], []
    for previous, arg in zip([None, *args], args):
        found = None if previous in NOT_PATHS else _local_path(arg)
        if found is None:
            shipped.append(arg)
            continue
        prefix, path = found
        if not (path.is_file() and path.suffix in CONFIG_SUFFIXES and path.stat().st_size < 1 << 20):
            raise JobError(f"{path} is on this machine only, but the cluster has nodes on other machines: put "
                           "the data in object storage (s3://, gs://) or a folder every node mounts, and name that")
        target = Path(SHIPPED_FILES_DIR) / path.name
        (working_dir / SHIPPED_FILES_DIR).mkdir(exist_ok=True)
        shutil.copy2(path, working_dir / target)
        shipped.append(prefix + str(target))
        notes.append(f"ships {path} as {target}")
    return shipped, notes


def job_command(args: list[str]) -> list[str]:
    """The arguments of a ``tvp`` command that can run as a job (a leading ``tvp`` dropped), or ``JobError``."""
    if args[:1] == ["tvp"]:
        args = args[1:]
    if not args:
        raise JobError("no command: give the tvp command after --, e.g. -- tvp run clip-demo")
    if args[0] in NOT_JOBS:
        raise JobError(f"tvp {args[0]} is not a job: give a command such as tvp run, tvp train or tvp ingest")
    return list(args)


def prepare_job(args: list[str], on_this_machine: bool, cwd: Path | None = None) -> PreparedJob:
    """The entrypoint and runtime environment for ``tvp ARGS``; raise ``JobError`` for what cannot travel."""
    cwd = cwd or Path.cwd()
    args = job_command(args)
    for arg in args:
        if _looks_secret(arg):
            raise JobError("an argument looks like a secret: a job's entrypoint is shown to anyone who can list "
                           "jobs, so give it to the cluster in its environment or a Kubernetes secret instead")
    tracking = os.environ.get("MLFLOW_TRACKING_URI")
    if tracking and redact_value(tracking) != tracking:
        raise JobError("MLFLOW_TRACKING_URI holds a password: jobs carry it, so set MLFLOW_TRACKING_USERNAME and "
                       "MLFLOW_TRACKING_PASSWORD on the cluster instead and give the URI without it")
    if not on_this_machine and (not tracking or is_local_store(tracking)):
        raise JobError(f"the cluster has nodes on other machines, but the tracking store "
                       f"{tracking or 'would be a SQLite file in the job folder'} is not one they reach: set "
                       "MLFLOW_TRACKING_URI to a tracking server (http://...) every node reaches")

    working_dir = Path(tempfile.mkdtemp(prefix="tvp-job-"))
    for name in SHIPPED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, working_dir / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, working_dir / name)
    notes: list[str] = []
    if not on_this_machine:
        try:
            args, notes = _ship_files(args, working_dir)
        except JobError:
            shutil.rmtree(working_dir, ignore_errors=True)
            raise

    # On this machine the job runs with this very interpreter (its virtual environment); elsewhere with the
    # cluster's python, which has tvp's dependencies installed (cluster/image/Dockerfile).
    entry = [sys.executable if on_this_machine else "python", "-m", "cluster.job_entry"]
    if on_this_machine:
        entry += ["--cwd", str(cwd)]
    entry += [client_version(), "--", *args]
    env = {k: os.environ[k] for k in FORWARDED_ENV if os.environ.get(k)}
    runtime_env = {"working_dir": str(working_dir), **({"env_vars": env} if env else {})}
    return PreparedJob(shlex.join(entry), runtime_env, working_dir, notes)


def submit(client, job: PreparedJob, submission_id: str | None = None, metadata: dict | None = None) -> str:
    """Submit; return the job's submission id. Submitting an id that exists returns it (idempotent)."""
    try:
        return client.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env, submission_id=submission_id,
                                 metadata={"tvp_version": client_version(), **(metadata or {})})
    except RuntimeError as exc:
        if submission_id and "already exists" in str(exc):
            return submission_id
        raise JobError(f"the cluster refused the job: {str(exc).strip().splitlines()[-1]}") from None
    finally:
        shutil.rmtree(job.working_dir, ignore_errors=True)  # uploaded (or refused): the copy is not needed


def follow(client, submission_id: str, write: Callable[[str], None], poll_s: float = 1.0) -> str:
    """Write the job's log as it grows until the job ends; return its final status."""
    shown = 0
    while True:
        status = str(client.get_job_status(submission_id).value)
        logs = client.get_job_logs(submission_id)
        if len(logs) > shown:
            write(logs[shown:])
            shown = len(logs)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(poll_s)


def exit_code(client, submission_id: str) -> int:
    """The job's entrypoint exit status where Ray knows it, else one from its final status."""
    info = client.get_job_info(submission_id)
    if info.driver_exit_code is not None:
        return int(info.driver_exit_code)
    return STATUS_EXIT_CODES.get(str(info.status.value), 1)


def describe(info) -> Iterator[str]:
    """Lines about one job for ``tvp jobs show``."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000)) if info.start_time else "-"
    yield f"{info.submission_id}  {info.status.value}  started {started}"
    yield f"  entrypoint: {info.entrypoint}"
    if info.message:
        yield f"  message: {info.message}"
    if info.end_time and info.start_time:
        yield f"  ran {(info.end_time - info.start_time) / 1000:.0f} s, exit code {info.driver_exit_code}"
    if info.metadata:
        yield "  metadata: " + ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items()))

