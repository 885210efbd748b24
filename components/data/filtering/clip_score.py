"""CLIP score: how well a caption describes its picture, the measure LAION and DataComp curate by. No Ray here.

The score of an image-text pair is the cosine similarity of the CLIP image
embedding and the CLIP text embedding, ``<u, v> / (|u| |v|)``, in [-1, 1]
(DataComp's "CLIP score"; LAION-400M kept pairs at or above 0.3 with OpenAI's
ViT-B/32, DataComp's baseline keeps the top 30 % with ViT-L/14). The
embeddings come from the task's inference signature (``Task.predict``: unit
length, the same numbers the registered model's pyfunc flavour gives); they
are normalised once more here, so the score is a cosine whatever a model returns.

A pair that cannot be scored gets NaN and a reason (``UNSCORED_REASONS``):
a sample without a ``.jpg`` or ``.txt``, a picture that does not decode, a
caption that is not UTF-8, a ``.json`` that is not a JSON object (the score
is stored into it, so it must be one). Such pairs never pass a filter.

Pieces:

- ``ClipScorer``: a CLIP task and model → ``score_batch(columns)``, the pure
  per-batch function the stage's actors run (numpy columns in, numpy out).
- ``ScoreRule``: ``--min-score S`` or ``--keep-fraction F``, and
  ``keep_threshold`` for the second: the (1 - F) quantile of the scores.
- ``sample_metadata``: a sample's ``.json`` as the dict the score is added to.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from components.errors import TvpError

SCORE_FIELD = "clip_score"  # the key each kept sample's .json gets
SCORE_DEFINITION = "cosine similarity of the unit-norm CLIP image and text embeddings"
MISSING_MEMBER, DECODE, INVALID_CAPTION, INVALID_JSON = "missing_member", "decode", "invalid_caption", "invalid_json"
UNSCORED_REASONS = (MISSING_MEMBER, DECODE, INVALID_CAPTION, INVALID_JSON)
COLUMNS = ("jpg", "txt", "json")  # what scoring reads of each sample


class ClipScoreError(TvpError, ValueError):
    """A filter that cannot run as asked (a bad rule, a model that is not a CLIP, nothing to score); one line."""


@dataclass(frozen=True)
class ScoreRule:
    """Which pairs are kept: those scoring at least ``min_score``, or the top ``keep_fraction`` of the set."""

    min_score: float | None = None
    keep_fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.min_score is None) == (self.keep_fraction is None):
            raise ClipScoreError("give exactly one of --min-score and --keep-fraction")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise ClipScoreError(f"--min-score must be a finite number, not {self.min_score}")
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise ClipScoreError(f"--keep-fraction must lie in (0, 1], not {self.keep_fraction}")

    @property
    def needs_distribution(self) -> bool:
        return self.keep_fraction is not None

    def describe(self) -> dict[str, float]:
        return {"min_score": self.min_score} if self.min_score is not None else {"keep_fraction": self.keep_fraction}

    def threshold(self, scores: np.ndarray) -> float:
        """The score at or above which a pair is kept, given every pair's score (NaN: unscored)."""
        return float(self.min_score) if self.min_score is not None else keep_threshold(scores, self.keep_fraction)


def keep_threshold(scores: np.ndarray, keep_fraction: float) -> float:
    """The (1 - F) quantile of the finite scores, as the k-th highest score with k = ceil(F * N).

    No interpolation: the threshold is a score some pair has, and keeping ``score >= threshold`` keeps
    exactly k pairs when scores do not tie there. Pairs tied with the threshold are all kept (none is
    preferred over another by an arbitrary order), so the kept fraction is at least F and exceeds it only
    by ties. ``F * N`` is rounded to 9 digits first, so 0.3 of 10 pairs is 3, not 4.
    """
    finite = np.asarray(scores, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        raise ClipScoreError("no image-text pair could be scored, so there is no score distribution to cut")
    k = min(len(finite), max(1, math.ceil(round(keep_fraction * len(finite), 9))))
    return float(np.partition(finite, len(finite) - k)[len(finite) - k])


def sample_metadata(raw: bytes | None) -> dict[str, Any] | None:
    """A sample's ``.json`` as a dict ({} when it has none); None when it is not a JSON object.

    NaN and infinities (which Python's JSON writer emits and strict JSON forbids) become null, as the
    image-text ingestion writes them.
    """
    if raw is None:
        return {}
    try:
        value = json.loads(raw, parse_constant=lambda _: None)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _member(value: Any) -> bytes | None:
    """A raw member from a batch column: bytes, or None where the sample has none (pandas fills NaN)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    return None


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, E) arrays, float32 (N,)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return ((a * b).sum(axis=1) / np.maximum(norms, 1e-12)).astype(np.float32)


class ClipScorer:
    """Scores batches of raw pairs with one CLIP task and model (``components.tasks.clip.ClipTask``).

    ``model`` needs only ``encode_image`` and ``encode_text``, the methods ``ClipTask.predict`` calls.
    """

    def __init__(self, task: Any, model: Any):
        self.task, self.model = task, model

    def score_batch(self, columns: dict[str, Sequence[Any]]) -> dict[str, np.ndarray]:
        """``jpg``, ``txt`` (and optionally ``json``) raw members → ``score`` float32 (N,) and ``reason`` (N,)
        object: "" for a scored pair, else one of ``UNSCORED_REASONS`` with a NaN score."""
        n = len(columns["jpg"]) if "jpg" in columns else len(columns["txt"])
        scores = np.full(n, np.nan, dtype=np.float32)
        reasons = np.array([""] * n, dtype=object)
        records: list[dict[str, Any]] = []
        rows: list[int] = []
        for i in range(n):
            image = _member(columns["jpg"][i]) if "jpg" in columns else None
            caption = _member(columns["txt"][i]) if "txt" in columns else None
            meta = _member(columns["json"][i]) if "json" in columns else None
            if image is None or caption is None:
                reasons[i] = MISSING_MEMBER
                continue
            try:
                text = caption.decode("utf-8")
            except UnicodeDecodeError:
                reasons[i] = INVALID_CAPTION
                continue
            if sample_metadata(meta) is None:
                reasons[i] = INVALID_JSON
                continue
            records.append({"text": text, "image": image})
            rows.append(i)
        for i, score in zip(rows, self._scores(records)):
            scores[i] = score
            if not np.isfinite(score):
                reasons[i] = DECODE
        return {"score": scores, "reason": reasons}

    def _scores(self, records: list[dict[str, Any]]) -> np.ndarray:
        """Scores of well-formed records; pictures that do not decode get NaN and the others are scored again.

        Anything else that fails is an error of the model or the code, not of the data, and is raised.
        """
        if not records:
            return np.zeros(0, dtype=np.float32)
        try:
            return self._predict(records)
        except Exception:
            decodes = np.array([_decodes(r["image"]) for r in records])
            if decodes.all():
                raise
        scores = np.full(len(records), np.nan, dtype=np.float32)
        scores[decodes] = self._scores([r for r, ok in zip(records, decodes) if ok])
        return scores

    def _predict(self, records: list[dict[str, Any]]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.task.predict(self.model, records)
        image = np.array([o["image_embedding"] for o in out], dtype=np.float32)
        text = np.array([o["text_embedding"] for o in out], dtype=np.float32)
        return cosine(image, text)


def _decodes(image: bytes) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as picture:
            picture.load()
    except Exception:
        return False
    return True


class DeviceModel:
    """A CLIP on an accelerator behind the CPU-tensor interface ``ClipTask.predict`` uses: inputs are moved
    to ``device``, embeddings come back to the CPU."""

    def __init__(self, model: Any, device: Any):
        self.model, self.device = model.to(device), device

    def encode_image(self, images):
        return self.model.encode_image(images.to(self.device)).float().cpu()

    def encode_text(self, tokens):
        return self.model.encode_text(tokens.to(self.device)).float().cpu()
