"""Stopping a run gracefully: a checkpoint at the current step, then a clean exit.

Two signals end in the same just-in-time checkpoint:
- the driver receives SIGTERM (a scheduler preempting the job): its handler
  flags a small Ray actor that rank 0 polls in the background;
- Ray drains a node of the worker group for preemption (a spot reclaim):
  ``ray.train.get_preemption_info()`` says so on every rank.
Ranks must checkpoint at the same step (saving gathers weights under FSDP),
so each step they agree on rank 0's flag with one tiny all-reduce.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import ray
import torch
import torch.distributed as dist

from components.errors import TvpError

POLL_INTERVAL_S = 0.5
DUPLICATE_WINDOW_S = 2.0


class TrainingStopped(TvpError, RuntimeError):
    """The run stopped on request after checkpointing; starting it again with the same name resumes."""

    exit_code = 128 + signal.SIGTERM  # as a process ended by SIGTERM, which is what asked for the stop


@ray.remote(num_cpus=0)
class StopRequest:
    """Holds why a stop was asked for (None while none was)."""

    def __init__(self) -> None:
        self._reason: str | None = None

    def request(self, reason: str) -> None:
        self._reason = self._reason or reason

    def reason(self) -> str | None:
        return self._reason


@contextmanager
def stop_on_sigterm() -> Iterator[tuple[str, "ray.actor.ActorHandle"]]:
    """Yield (actor name, actor); while inside, SIGTERM asks the run to checkpoint and stop; another SIGTERM
    more than ``DUPLICATE_WINDOW_S`` later kills."""
    name = f"tvp-stop-{uuid.uuid4().hex[:12]}"
    actor = StopRequest.options(name=name).remote()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None

    first: list[float] = []

    def on_sigterm(signum, frame):
        # A supervisor that signals a whole process tree (Ray's job stop, kill -- -PGID) and a parent that
        # passes the signal on (tvp run) deliver one request twice: only a SIGTERM that comes later kills.
        now = time.monotonic()
        if not first:
            first.append(now)
            actor.request.remote("SIGTERM")
        elif now - first[0] > DUPLICATE_WINDOW_S:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    if in_main_thread:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield name, actor
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        ray.kill(actor)


class StopWatcher:
    """Worker side: rank 0 polls the driver's stop request; ``agreed()`` shares its answer with every rank."""

    def __init__(self, actor_name: str | None, rank: int, device: torch.device):
        self._device = device
        self._requested = threading.Event()
        if actor_name and rank == 0:
            actor = ray.get_actor(actor_name)
            threading.Thread(target=self._poll, args=(actor,), daemon=True).start()

    def _poll(self, actor) -> None:
        while not self._requested.wait(POLL_INTERVAL_S):
            try:
                if ray.get(actor.reason.remote(), timeout=10):
                    self._requested.set()
            except Exception:  # the driver is gone: Ray Train ends the workers itself
                return

    def agreed(self) -> bool:
        """Whether rank 0 has seen a stop request; the same answer on every rank."""
        flag = torch.tensor([1.0 if self._requested.is_set() else 0.0], device=self._device)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
