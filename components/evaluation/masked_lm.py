"""Masked-LM and next-sentence evaluation, with the baselines a masked-LM accuracy means something against.

``masked_lm_outputs`` gives per-example sums (dim 0 = examples), so that the
outputs of any batches on any workers add up to the same metrics;
``masked_lm_metrics`` reduces them. The baselines: always predicting the most
frequent token of the training documents, and the unigram distribution of
those documents (its cross-entropy on the masked tokens is the "unigram
entropy" a model that learned nothing about context would reach).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100  # label of positions with nothing to predict


def masked_lm_outputs(mlm_logits: torch.Tensor, nsp_logits: torch.Tensor, mlm_labels: torch.Tensor,
                      nsp_label: torch.Tensor, unigram_counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """``mlm_logits`` (B, L, V), ``nsp_logits`` (B, 2), ``mlm_labels`` (B, L) with ``IGNORE`` where nothing is
    predicted, ``nsp_label`` (B,), ``unigram_counts`` (V,) → per-example sums over predicted tokens: correct,
    count, loss (nats), the two baselines' correct and loss, and NSP correctness."""
    predicted = mlm_labels != IGNORE
    targets = mlm_labels.clamp(min=0)
    nll = F.cross_entropy(mlm_logits.float().transpose(1, 2), targets, reduction="none")  # (B, L)
    smoothed = unigram_counts.double() + 1  # add-one: a token never seen in training has a finite cost
    unigram_nll = -(smoothed / smoothed.sum()).log()[targets].float()  # (B, L)
    most_frequent = int(unigram_counts.argmax())
    return {
        "mlm_correct": ((mlm_logits.argmax(-1) == targets) & predicted).sum(1),
        "mlm_count": predicted.sum(1),
        "mlm_nll": (nll * predicted).sum(1),
        "baseline_correct": ((targets == most_frequent) & predicted).sum(1),
        "unigram_nll": (unigram_nll * predicted).sum(1),
        "nsp_correct": (nsp_logits.argmax(-1) == nsp_label).long(),
    }


def masked_lm_metrics(outputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy and loss over every predicted token, NSP accuracy over every example, and the baselines."""
    tokens = max(int(outputs["mlm_count"].sum()), 1)
    examples = len(outputs["nsp_correct"])
    return {
        "mlm_accuracy": float(outputs["mlm_correct"].sum()) / tokens,
        "mlm_loss": float(outputs["mlm_nll"].sum()) / tokens,
        "nsp_accuracy": float(outputs["nsp_correct"].sum()) / max(examples, 1),
        "mlm_baseline_accuracy": float(outputs["baseline_correct"].sum()) / tokens,
        "mlm_unigram_entropy": float(outputs["unigram_nll"].sum()) / tokens,
        "num_eval_samples": float(examples),
        "num_eval_tokens": float(tokens),
    }
