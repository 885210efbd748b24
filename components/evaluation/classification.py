"""Classification metrics from per-sample outputs: top-1, top-k and the confusion matrix.

``topk_outputs`` runs per batch (dim 0 = samples, so outputs of many batches
and workers concatenate); ``classification_metrics`` and ``confusion_matrix``
reduce the concatenation, in any order.
"""

from __future__ import annotations

import numpy as np
import torch


def topk_outputs(logits: torch.Tensor, labels: torch.Tensor, k: int = 5) -> dict[str, torch.Tensor]:
    """Per sample: ``predicted`` (top-1 class), ``label``, and ``in_topk`` (1 when the label is among the k best)."""
    k = min(k, logits.shape[-1])
    best = logits.topk(k, dim=-1).indices  # (B, k)
    return {"predicted": best[:, 0], "label": labels, "in_topk": (best == labels[:, None]).any(dim=-1).to(torch.int8)}


def classification_metrics(outputs: dict[str, np.ndarray], num_classes: int, k: int = 5) -> dict[str, float]:
    """``top1``, ``top{k}`` (what ``topk_outputs`` measured), the number of samples and of classes."""
    labels = outputs["label"]
    count = len(labels)
    return {
        "top1": float((outputs["predicted"] == labels).mean()) if count else 0.0,
        f"top{k}": float(outputs["in_topk"].mean()) if count else 0.0,
        "num_eval_samples": float(count),
        "num_classes": float(num_classes),
    }


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix
