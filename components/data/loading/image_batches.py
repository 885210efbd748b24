"""Turning encoded images into model input: a pure per-batch function, no Ray."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

# Per-channel statistics used to normalise inputs (CLIP's, from its paper's data).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def images_to_array(
    encoded: Sequence[bytes],
    image_size: int,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> np.ndarray:
    """Decode JPEG/PNG bytes to a normalised float32 array (N, 3, image_size, image_size)."""
    out = np.empty((len(encoded), 3, image_size, image_size), dtype=np.float32)
    mean_arr = np.asarray(mean, dtype=np.float32)[:, None, None]
    std_arr = np.asarray(std, dtype=np.float32)[:, None, None]
    for i, data in enumerate(encoded):
        img = Image.open(io.BytesIO(data)).convert("RGB")
        if img.size != (image_size, image_size):
            img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
        pixels = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0  # (3, H, W)
        out[i] = (pixels - mean_arr) / std_arr
    return out
