"""Where the output of Ray workers that reaches this driver goes.

Ray sends what the workers of a job print (stdout and stderr of Ray Train's
controller and workers, of Ray Data's tasks, of the raylet) to the job's
driver in batches, when ``ray.init(log_to_driver=True)``. Ray prints them
itself; ``cluster.ray_cluster.connect`` hands them here instead, to the sink
that ``send_worker_output_to`` set. The default sink prints them as Ray
does; the ``tvp`` CLI's console files them in its log and shows only the
lines workers mark for people (``components.console_lines``).

This module imports no Ray, so a sink can be set before Ray is imported.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

# Ray's distributed tqdm sends progress-bar states as JSON lines carrying this token; they are not text.
_TQDM_TOKEN = "__ray_tqdm_magic_token__"


@dataclass(frozen=True)
class WorkerOutput:
    """Consecutive lines of one worker process's stdout (``is_err`` False) or stderr."""

    source: str  # "RayTrainWorker pid=5744", "TrainController pid=5575, ip=10.0.0.2", "raylet"
    is_err: bool
    lines: list[str]


Sink = Callable[[WorkerOutput], None]


def print_like_ray(output: WorkerOutput) -> None:
    """The default sink: ``(source) line`` on this process's stdout or stderr, as Ray prints them."""
    stream = sys.stderr if output.is_err else sys.stdout
    for line in output.lines:
        stream.write(f"({output.source}) {line}\n")
    stream.flush()


_sink: Sink = print_like_ray


def send_worker_output_to(sink: Sink | None) -> Sink:
    """Send worker output to ``sink`` from now on (None: back to printing it); return the previous sink."""
    global _sink
    previous, _sink = _sink, sink or print_like_ray
    return previous


def forward(batch: dict) -> None:
    """Ray's handler for one batch of worker output (its keys: pid, ip, localhost, is_err, lines, actor_name, ...)."""
    lines = [line for line in batch.get("lines", []) if _TQDM_TOKEN not in line]
    if batch.get("pid") == "autoscaler":
        lines = _autoscaler_events(lines)
    if lines:
        _sink(WorkerOutput(_source(batch), bool(batch.get("is_err")), lines))


def _autoscaler_events(lines: list[str]) -> list[str]:
    """The autoscaler's events ("resource request cannot be scheduled"), not its status tables, as Ray shows them."""
    try:
        from ray._private.worker import filter_autoscaler_events
    except ImportError:
        return lines
    return list(filter_autoscaler_events(lines))


def _source(batch: dict) -> str:
    pid = batch.get("pid")
    if pid in ("raylet", "autoscaler"):
        return str(pid)
    name = batch.get("actor_name") or batch.get("task_name")
    ip = batch.get("ip")
    where = "" if not ip or ip == batch.get("localhost") else f", ip={ip}"
    return f"{name + ' ' if name else ''}pid={pid}{where}"
