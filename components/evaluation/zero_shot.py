"""Zero-shot classification with a dual encoder: class names in prompts become a linear classifier."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def zero_shot_classifier(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenize: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str],
) -> torch.Tensor:
    """(C, E) unit-norm class embeddings: each the mean embedding of its prompts, renormalised."""
    weights = []
    for name in class_names:
        tokens = torch.from_numpy(tokenize([t.format(name) for t in templates]))
        weights.append(F.normalize(encode_text(tokens).mean(dim=0), dim=-1))
    return torch.stack(weights)
