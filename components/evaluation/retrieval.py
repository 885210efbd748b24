"""Image↔text retrieval recall@K from the embeddings of a captioned image set (COCO, Flickr30k style).

Images may have several captions: ``text_to_image[t]`` is the index of caption
t's image. Both directions rank by the dot product of the embeddings (cosine
similarity for unit-norm inputs):

- text → image: caption t scores a hit at K when its image is among the K
  best-ranked images for it;
- image → text: image i scores a hit at K when ANY of its captions is among
  the K best-ranked captions for it (its best-ranked caption decides).
  Images without a caption are left out of this direction.

Ties are decided deterministically: candidates are ordered by score,
descending, and equal scores by candidate index, ascending (a stable sort).
A target tied with another candidate therefore ranks ahead of it when its
index is lower and behind it otherwise, so recall never depends on the
sorting algorithm or on the device.

The (queries × candidates) similarity matrix is computed ``chunk_size`` rows
at a time, so a 5k × 25k evaluation holds a few tens of MB, not the whole
matrix. Inputs are numpy arrays or torch tensors (on any device); the work
runs in torch, in float32 or float64 as given.

Metric names avoid ``@`` (MLflow rejects it): ``image_to_text_R1``,
``text_to_image_R5``, ... and ``retrieval_mean_recall``, the mean of all of
them, as open_clip and CLIP's papers report it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)
CHUNK_SIZE = 256  # query rows per similarity block: 256 × 25k float32 ≈ 25 MB


def _tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.dtype in (torch.float32, torch.float64) else t.to(torch.float32)


def _rank_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, the 0-based position of column ``target[row]`` when the row is sorted by (score desc, index asc)."""
    own = scores.gather(1, target[:, None])
    columns = torch.arange(scores.shape[1], device=scores.device)
    ahead = (scores > own) | ((scores == own) & (columns[None, :] < target[:, None]))
    return ahead.sum(dim=1)


@torch.no_grad()
def retrieval_ranks(image_embeddings: np.ndarray | torch.Tensor, text_embeddings: np.ndarray | torch.Tensor,
                    text_to_image: np.ndarray | torch.Tensor | Sequence[int], chunk_size: int = CHUNK_SIZE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks under the tie rule above: ``image_to_text`` (N_img,) the rank of each image's best-ranked
    caption among all captions (-1 for an image without captions), ``text_to_image`` (N_txt,) the rank of each
    caption's image among all images. Recall@K is the share of ranks below K."""
    images, texts = _tensor(image_embeddings), _tensor(text_embeddings)
    dtype = torch.promote_types(images.dtype, texts.dtype)
    texts = texts.to(device=images.device, dtype=dtype)
    images = images.to(dtype)
    owner = torch.as_tensor(np.asarray(text_to_image, dtype=np.int64) if not torch.is_tensor(text_to_image)
                            else text_to_image).to(device=images.device, dtype=torch.int64)
    n_img, n_txt = images.shape[0], texts.shape[0]
    if images.ndim != 2 or texts.ndim != 2 or images.shape[1] != texts.shape[1]:
        raise ValueError(f"embeddings {tuple(images.shape)} and {tuple(texts.shape)}: need (N_img, E) and (N_txt, E)")
    if owner.shape != (n_txt,):
        raise ValueError(f"text_to_image has shape {tuple(owner.shape)}, need ({n_txt},): one image index per text")
    if n_txt and (int(owner.min()) < 0 or int(owner.max()) >= n_img):
        raise ValueError(f"text_to_image indexes images 0..{n_img - 1}; got {int(owner.min())}..{int(owner.max())}")

    text_ranks = torch.empty(n_txt, dtype=torch.int64, device=images.device)
    for start in range(0, n_txt, chunk_size):
        scores = texts[start:start + chunk_size] @ images.T  # (b, N_img)
        text_ranks[start:start + chunk_size] = _rank_of(scores, owner[start:start + chunk_size])

    image_ranks = torch.full((n_img,), -1, dtype=torch.int64, device=images.device)
    for start in range(0, n_img, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n_img), device=images.device)
        scores = images[rows] @ texts.T  # (b, N_txt)
        own = owner[None, :] == rows[:, None]
        has_caption = own.any(dim=1)
        # The best-ranked own caption: highest score, then lowest index (argmax returns the first maximum).
        best_score = torch.where(own, scores, torch.tensor(float("-inf"), dtype=dtype, device=scores.device)).amax(1)
        best = (own & (scores == best_score[:, None])).to(torch.int8).argmax(dim=1)
        ranks = _rank_of(scores, best)
        image_ranks[rows] = torch.where(has_caption, ranks, torch.full_like(ranks, -1))
    return image_ranks.cpu().numpy(), text_ranks.cpu().numpy()


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[int, float]:
    """K → share of the (non-negative) ranks below K; ranks of -1 (no target) are left out."""
    ranks = np.asarray(ranks)
    ranks = ranks[ranks >= 0]
    return {int(k): float((ranks < k).mean()) if len(ranks) else 0.0 for k in ks}


def retrieval_metrics(image_embeddings: np.ndarray | torch.Tensor, text_embeddings: np.ndarray | torch.Tensor,
                      text_to_image: np.ndarray | torch.Tensor | Sequence[int], ks: Sequence[int] = DEFAULT_KS,
                      chunk_size: int = CHUNK_SIZE) -> dict[str, float]:
    """``image_to_text_R{k}`` and ``text_to_image_R{k}`` for each k in ``ks``, their mean
    ``retrieval_mean_recall``, and the counts ``num_retrieval_images`` / ``num_retrieval_texts``."""
    image_ranks, text_ranks = retrieval_ranks(image_embeddings, text_embeddings, text_to_image, chunk_size)
    metrics: dict[str, float] = {}
    for direction, ranks in (("image_to_text", image_ranks), ("text_to_image", text_ranks)):
        for k, recall in recall_at_k(ranks, ks).items():
            metrics[f"{direction}_R{k}"] = recall
    metrics["retrieval_mean_recall"] = float(np.mean(list(metrics.values()))) if metrics else 0.0
    metrics["num_retrieval_images"] = float((image_ranks >= 0).sum())
    metrics["num_retrieval_texts"] = float(len(text_ranks))
    return metrics
