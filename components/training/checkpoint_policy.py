"""When the loop checkpoints and evaluates, and why: a small decision made after every step."""

from __future__ import annotations

import math
import time

from components.training.train_config import TrainConfig

# Checkpoints taken without an evaluation carry this as the evaluation metric, so Ray Train ranks them
# below every evaluated one (NaN sorts lowest in either mode) and keeps them only as the latest.
NOT_EVALUATED = math.nan
EVAL_METRICS_KEY = "eval_metrics"  # a report's comma-separated names of the evaluation metrics it carries


class CheckpointPolicy:
    def __init__(self, cfg: TrainConfig, has_eval: bool):
        self.cfg, self.has_eval = cfg, has_eval
        self.last_checkpoint = time.monotonic()

    def evaluate_now(self, step: int) -> bool:
        every = self.cfg.eval_every_steps
        return self.has_eval and bool(every) and step % every == 0

    def mid_epoch_trigger(self, step: int, stopping: bool, preempted: bool) -> str | None:
        """Why to checkpoint after this (mid-epoch) step, or None."""
        cfg = self.cfg
        due_steps = bool(cfg.checkpoint_every_steps) and step % cfg.checkpoint_every_steps == 0
        due_time = bool(cfg.checkpoint_every_minutes) and \
            time.monotonic() - self.last_checkpoint > 60 * cfg.checkpoint_every_minutes
        triggers = {"stop": stopping, "preemption": preempted, "steps": due_steps, "minutes": due_time,
                    "evaluation": self.evaluate_now(step)}
        return next((name for name, due in triggers.items() if due), None)

    def checkpointed(self) -> None:
        self.last_checkpoint = time.monotonic()

    def report_metrics(self, metrics: dict[str, float], evaluated: dict[str, float]) -> dict[str, float]:
        """What a checkpoint report carries: ``metrics``, the evaluation's (named under ``eval_metrics``), and
        the checkpoint metric as not-evaluated when this checkpoint has none."""
        out = {**metrics, **evaluated, EVAL_METRICS_KEY: ",".join(sorted(evaluated))}
        out.setdefault(self.cfg.checkpoint_metric, NOT_EVALUATED)
        return out
