"""How many epochs fit a learning benchmark's wall-clock budget (imported by the learn_*.py benchmarks; a helper, not a benchmark)."""

from __future__ import annotations

import time
from pathlib import Path


def epochs_in_budget(spec: dict, root: Path, minutes: float) -> int:
    """Epochs that fit the budget: the time of two more epochs after a first (whose start-up is not an epoch's
    cost), from two probe runs of ``spec`` through the in-process harness that are thrown away."""
    from components.training.harness import train_in_process

    took = []
    for epochs in (1, 3):
        started = time.perf_counter()
        train_in_process({**spec, "train": {**spec["train"], "epochs": epochs}}, root / f"probe{epochs}")
        took.append(time.perf_counter() - started)
    # The difference of two short runs is noisy (one slow probe and the estimate doubles the epochs), so the
    # cost of an epoch is taken as at least a third of the 3-epoch probe: start-up included, it errs short.
    per_epoch = max((took[1] - took[0]) / 2, took[1] / 3, 1e-3)
    return max(1, int((minutes * 60 - took[0]) / per_epoch) + 1)
