"""The defaults of image-text ingestion, declared once.

``ImageConfig``, ``FetchConfig`` and ``IngestConfig`` take their defaults from
here, and so do the flags of ``tvp ingest image-text``: the library, the
pipeline configs and the command line cannot disagree. What each setting
means is documented on its config field. This module imports nothing, so the
command line reads it without slowing its start.
"""

from __future__ import annotations

from typing import Literal

# The modes of img2dataset: border fits inside a size x size square and pads
# black; keep_ratio makes the smaller side `size`, keep_ratio_largest the
# larger one; center_crop fills the square and crops the middle.
ResizeMode = Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]

# ImageConfig
IMAGE_SIZE = 256  # the README's size (img2dataset's too); presets such as tiny.yaml set their own
RESIZE_MODE: ResizeMode = "border"
JPEG_QUALITY = 95
MAX_PIXELS = 64_000_000  # at most 14 bytes a pixel on the way (image_processing.py): fits DECODE_BUDGET_MB alone
MIN_IMAGE_SIZE = 1
MAX_ASPECT_RATIO = 0.0  # 0 = off

# FetchConfig
FETCH_TIMEOUT_S = 10.0
FETCH_RETRIES = 2
MAX_BYTES = 32 * 1024 * 1024  # one limit for downloads and local files

# IngestConfig
THREADS = 32
DECODE_BUDGET_MB = 1024  # decoded pixels held at once by one shard task's threads (decode_budget.py)
MIN_CAPTION_LENGTH = 1
MAX_CAPTION_LENGTH: int | None = None  # no limit

# The shard stage
ROWS_PER_SHARD = 10_000
