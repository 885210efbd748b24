"""Evaluations recorded on registered versions, and promotion of the ``champion`` alias by a metric.

A version's evaluation lives in its tags (``eval.<metric>``, plus the
content hash of the data it was measured on). A candidate takes the alias
only when it beats the current holder on the same data; every decision,
taken or not, is written on the candidate with its reason.
"""

from __future__ import annotations

from typing import Literal

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.errors import TvpError

EVAL_PREFIX = "eval."
EVAL_DATA_TAG = "eval.data_manifest_hash"
PROMOTION_TAG = "promotion"
CHAMPION_ALIAS = "champion"
Mode = Literal["max", "min"]


class PromotionError(TvpError, ValueError):
    pass


def record_evaluation(client: MlflowClient, name: str, version: str, metrics: dict[str, float], data_hash: str) -> None:
    for metric, value in metrics.items():
        client.set_model_version_tag(name, version, f"{EVAL_PREFIX}{metric}", repr(float(value)))
    client.set_model_version_tag(name, version, EVAL_DATA_TAG, data_hash)


def evaluation_of(version: ModelVersion, metric: str) -> float | None:
    value = version.tags.get(f"{EVAL_PREFIX}{metric}")
    return float(value) if value is not None else None


def beats(candidate: float, incumbent: float, mode: Mode) -> bool:
    """Strictly better: a tie keeps the incumbent."""
    return candidate > incumbent if mode == "max" else candidate < incumbent


def promote(
    client: MlflowClient, candidate: ModelVersion, metric: str, mode: Mode = "max", alias: str = CHAMPION_ALIAS
) -> tuple[bool, str]:
    """Give ``alias`` to ``candidate`` if its evaluation beats the holder's; return (promoted, reason)."""
    name, version = candidate.name, str(candidate.version)
    score = evaluation_of(candidate, metric)
    if score is None:
        raise PromotionError(f"{name} version {version} has no evaluation of {metric!r}: run tvp evaluate first")
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        holder = None
    if holder is None:
        promoted, reason = True, f"first {alias}: {metric}={score:.4f}"
    elif str(holder.version) == str(version):
        promoted, reason = False, f"version {version} already holds {alias}"
    else:
        best = evaluation_of(holder, metric)
        if best is None or holder.tags.get(EVAL_DATA_TAG) != candidate.tags.get(EVAL_DATA_TAG):
            promoted, reason = True, f"{alias} version {holder.version} has no {metric} on the same data; {metric}={score:.4f}"
        elif beats(score, best, mode):
            promoted, reason = True, f"{metric}={score:.4f} beats {alias} version {holder.version}'s {best:.4f}"
        else:
            promoted, reason = False, f"{metric}={score:.4f} does not beat {alias} version {holder.version}'s {best:.4f}"
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, PROMOTION_TAG, ("promoted to " if promoted else "not promoted: ") + reason)
    return promoted, reason
