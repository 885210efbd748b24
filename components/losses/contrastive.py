"""Contrastive losses for dual encoders."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: mean of image→text and text→image cross-entropy.

    ``image_emb`` and ``text_emb`` are (B, E) unit-norm embeddings of matched
    pairs (row i of one matches row i of the other); ``logit_scale`` is the
    already exponentiated temperature.
    """
    logits = logit_scale * image_emb @ text_emb.T  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
