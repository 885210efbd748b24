"""Where the training loop runs: what it asks of its surroundings, and the in-process surroundings.

The loop (``training_loop.py``) knows nothing of Ray. It asks its context
for its rank, device and latest checkpoint, hands it reports (metrics and,
on rank 0, a checkpoint folder), and asks whether to stop. ``RayContext``
(``worker_loop.py``) answers from Ray Train; ``LocalContext`` answers in one
process with checkpoints in a folder, which is what the in-process harness
and the tests use to check learning, fine-tuning and exact resume cheaply.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


class LoopContext(ABC):
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @abstractmethod
    def latest_checkpoint(self) -> contextmanager:
        """A context manager yielding the folder of the latest committed checkpoint, or None."""

    @abstractmethod
    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """Called by every rank; ``checkpoint_dir`` is rank 0's finished checkpoint folder (None elsewhere)."""

    def stop_requested(self) -> bool:
        """Whether to checkpoint and stop now; the same answer on every rank."""
        return False

    def preempted(self) -> bool:
        """Whether a node of the run is being taken away (a barrier: not called every step)."""
        return False

    def count_step(self) -> None:
        """A step was trained (the in-process context counts them to stop on request)."""

    def close(self) -> None:
        """The loop has ended (worker logs are saved here)."""


class LocalContext(LoopContext):
    """One process, checkpoints kept as ``root/checkpoint_NNNNNN`` folders, reports kept in ``reports``.

    ``stop_after_reports`` makes ``stop_requested`` answer yes once that many reports were made: a test's
    stand-in for a stopped job, with the same checkpoint-then-stop path as SIGTERM under Ray.
    """

    def __init__(self, root: str | Path, stop_after_steps: int | None = None, rank: int = 0, world: int = 1):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = rank, world
        self.reports: list[dict[str, Any]] = []
        self.stop_after_steps = stop_after_steps
        self.steps_seen = 0

    def _checkpoints(self) -> list[Path]:
        """Committed checkpoints in order (with several processes, every rank reads rank 0's)."""
        return sorted(p for p in self.root.glob("checkpoint_*") if (p / ".committed").is_file())

    @contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        found = self._checkpoints()
        yield str(found[-1]) if found else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            target = self.root / f"checkpoint_{len(self._checkpoints()):06d}"
            shutil.copytree(checkpoint_dir, target)
            (target / ".committed").write_text(json.dumps(metrics, default=str))

    def count_step(self) -> None:
        self.steps_seen += 1

    def stop_requested(self) -> bool:
        return self.stop_after_steps is not None and self.steps_seen >= self.stop_after_steps
