"""Zero-shot classification with a dual encoder: class names in prompts become a linear classifier.

- ``zero_shot_classifier``: each class's prompts (the templates filled with
  its name) embedded, each embedding normalised, averaged and renormalised:
  CLIP's prompt ensembling.
- ``DEFAULT_TEMPLATES``: a short ensemble of generic photo prompts.
- ``zero_shot_accuracy``: top-1 / top-5 from image embeddings and that classifier.
- ``zero_shot_top_predictions``: each image's k most probable classes and their
  softmax probabilities, for pictures (``components.viz.top_predictions``).

Ranks break ties as ``retrieval`` does: by score, then by the lower class row.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Generic photo prompts: a plain one first (a one-template run uses it), then variations in quality, size,
# framing and rendering that keep the class name as the subject.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a blurry photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a close-up photo of the {}.",
    "a cropped photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a low resolution photo of a {}.",
    "a good photo of the {}.",
    "a drawing of a {}.",
    "a rendering of the {}.",
    "itap of a {}.",
)
LOGIT_SCALE = 100.0  # CLIP's learnt temperature saturates at 100: probabilities as the trained model gives them


@torch.no_grad()
def zero_shot_classifier(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenize: Callable[[list[str]], np.ndarray],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """(C, E) unit-norm class embeddings: each the mean of its normalised prompt embeddings, renormalised."""
    weights = []
    for name in class_names:
        tokens = torch.from_numpy(tokenize([t.format(name) for t in templates]))
        prompts = F.normalize(encode_text(tokens), dim=-1)
        weights.append(F.normalize(prompts.mean(dim=0), dim=-1))
    return torch.stack(weights)


def _tensor(x: np.ndarray | torch.Tensor | Sequence) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    return t if not t.is_floating_point() or t.dtype in (torch.float32, torch.float64) else t.float()


@torch.no_grad()
def label_ranks(image_embeddings: np.ndarray | torch.Tensor, classifier: np.ndarray | torch.Tensor,
                labels: np.ndarray | torch.Tensor | Sequence[int], class_ids: Sequence[int] | None = None
                ) -> np.ndarray:
    """(N,) 0-based rank of each image's true class among the classifier rows (score desc, row asc).

    ``labels`` are classifier rows, or, with ``class_ids`` (the label id of each row, e.g. a manifest's sorted
    class ids), label ids mapped through it. A label that no row carries ranks -1 (never a hit)."""
    images, weights = _tensor(image_embeddings), _tensor(classifier)
    dtype = torch.promote_types(images.dtype, weights.dtype)
    scores = images.to(dtype) @ weights.to(device=images.device, dtype=dtype).T  # (N, C)
    labels = _tensor(labels).to(device=scores.device, dtype=torch.int64)
    rows = labels
    if class_ids is not None:
        ids = _tensor(class_ids).to(device=scores.device, dtype=torch.int64)
        match = ids[None, :] == labels[:, None]
        rows = torch.where(match.any(dim=1), match.to(torch.int8).argmax(dim=1), torch.full_like(labels, -1))
    known = (rows >= 0) & (rows < scores.shape[1])
    safe = torch.where(known, rows, torch.zeros_like(rows))
    own = scores.gather(1, safe[:, None])
    columns = torch.arange(scores.shape[1], device=scores.device)
    ranks = ((scores > own) | ((scores == own) & (columns[None, :] < safe[:, None]))).sum(dim=1)
    return torch.where(known, ranks, torch.full_like(ranks, -1)).cpu().numpy()


def zero_shot_accuracy(image_embeddings: np.ndarray | torch.Tensor, classifier: np.ndarray | torch.Tensor,
                       labels: np.ndarray | torch.Tensor | Sequence[int], class_ids: Sequence[int] | None = None,
                       ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``zero_shot_top{k}`` for k in ``ks``: the share of images whose true class ranks among the k best (a k
    beyond the class count counts every known label; an unknown label is a miss). ``labels`` and ``class_ids``
    as in ``label_ranks``."""
    ranks = label_ranks(image_embeddings, classifier, labels, class_ids)
    return {f"zero_shot_top{k}": float(((ranks >= 0) & (ranks < k)).mean()) if len(ranks) else 0.0 for k in ks}


@torch.no_grad()
def zero_shot_top_predictions(image_embeddings: np.ndarray | torch.Tensor, classifier: np.ndarray | torch.Tensor,
                              k: int = 5, logit_scale: float = LOGIT_SCALE) -> tuple[np.ndarray, np.ndarray]:
    """(rows (N, k) int64, probabilities (N, k)): each image's k best classifier rows, best first, with their
    softmax(logit_scale · cosine) probabilities over all classes. Ties: the lower row first."""
    images, weights = _tensor(image_embeddings), _tensor(classifier)
    dtype = torch.promote_types(images.dtype, weights.dtype)
    scores = images.to(dtype) @ weights.to(device=images.device, dtype=dtype).T
    probabilities = (logit_scale * scores).softmax(dim=-1)
    k = min(k, scores.shape[1])
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
    return order.cpu().numpy(), probabilities.gather(1, order).cpu().numpy()
