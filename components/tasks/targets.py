"""Variable-size targets (boxes, labels per object) in fixed-shape batches: padded, with counts.

A transform pads each sample's items to ``max_items`` and keeps how many are
real; the loss asks for the exact per-sample tensors back. Fixed shapes are
what lets batches stack, move to a device and split across workers unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # torch is only needed where tensors are unpadded: transforms stay numpy-only
    import torch


def pad_items(items: Sequence[np.ndarray], max_items: int, fill: float = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, max_items, *item_shape) padded array and (N,) int64 counts from per-sample (k_i, *item_shape) arrays."""
    if not items:
        raise ValueError("pad_items needs at least one sample")
    shape = np.asarray(items[0]).shape[1:]
    dtype = np.result_type(*[np.asarray(a).dtype for a in items])
    padded = np.full((len(items), max_items, *shape), fill, dtype=dtype)
    counts = np.zeros(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        item = np.asarray(item)
        if len(item) > max_items:
            raise ValueError(f"sample {i} has {len(item)} items, more than max_items={max_items}")
        padded[i, : len(item)] = item
        counts[i] = len(item)
    return padded, counts


def unpad(padded: torch.Tensor, counts: torch.Tensor) -> list[torch.Tensor]:
    """The per-sample tensors (k_i, *item_shape) back from a padded batch and its counts."""
    return [padded[i, : int(k)] for i, k in enumerate(counts.tolist())]
