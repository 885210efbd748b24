"""Soft targets for classifiers: label smoothing, and mixup/cutmix across a batch (timm's "batch" mode).

- ``smoothed_targets``: one-hot rows with ε spread evenly: the true class
  gets 1 - ε + ε/C, every other class ε/C.
- ``mix_batch``: with probability ``mix_prob`` the batch is mixed; cutmix is
  chosen with probability ``switch_prob`` when both ``mixup_alpha`` and
  ``cutmix_alpha`` are on, else whichever is on. λ ~ Beta(α, α), one for the
  batch. Sample i is paired with sample N-1-i (the batch reversed, as timm
  does; the middle sample of an odd batch is paired with itself and stays as
  it is). Mixup blends whole images, λ·x_i + (1-λ)·x_partner; normalisation
  is affine, so blending normalised images equals blending pixels. Cutmix
  pastes the partner's pixels inside a box of area share 1-λ centred at a
  uniform position and clipped to the image, then sets λ to 1 - (the clipped
  box's true area share). Targets blend with the same λ:
  λ·t_i + (1-λ)·t_partner, so every row still sums to 1.

Reproducibility: the batch's draws (mix or not, mixup or cutmix, λ, box) come
from a generator seeded by one number drawn from each sample's generator,
in batch order (``batch_generator``). The sample generators are seeded by
(seed, epoch, sample id) and, called after ``augment_images``, are in a
state fixed by those and the config; a resumed epoch replays the same
batches with the same sample ids in the same order, so it replays the same
numbers, the same λ and the same box. The draw depends on every sample of
the batch and on their order, both of which a resume replays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from components.data.loading.image_augment import AugmentConfig


def smoothed_targets(labels: Sequence[int] | np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    """(N, C) float32: 1 - smoothing + smoothing/C on each label's class, smoothing/C elsewhere."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels range over [{labels.min()}, {labels.max()}]: they must lie in [0, {num_classes})")
    off = smoothing / num_classes
    out = np.full((labels.size, num_classes), off, dtype=np.float32)
    out[np.arange(labels.size), labels] = 1.0 - smoothing + off
    return out


def batch_generator(rngs: Sequence[np.random.Generator]) -> np.random.Generator:
    """A generator for the batch's shared draws, seeded by one draw from each sample's generator, in order."""
    return np.random.default_rng([int(r.integers(0, 2**63)) for r in rngs])


@dataclass(frozen=True)
class MixDraw:
    """What one batch's mixing does."""

    mode: Literal["none", "mixup", "cutmix"]
    lam: float  # share of each sample's own image and target; 1.0 when mode is "none"
    box: tuple[int, int, int, int] | None = None  # cutmix's pasted (top, left, bottom, right), end exclusive


def cutmix_box(lam: float, height: int, width: int, centre: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a box of area share 1 - lam centred at ``centre`` (2 uniforms: y, x),
    clipped to the image."""
    side = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(round(height * side)), int(round(width * side))
    cy, cx = int(centre[0] * height), int(centre[1] * width)
    top, left = cy - cut_h // 2, cx - cut_w // 2
    return (max(top, 0), max(left, 0), min(top + cut_h, height), min(left + cut_w, width))


def draw_mix(rng: np.random.Generator, cfg: AugmentConfig, height: int, width: int) -> MixDraw:
    """The batch's mixing from ``rng`` (the batch generator): always the same sequence of draws."""
    mix_coin, switch_coin = rng.random(2)
    mixup_on, cutmix_on = cfg.mixup_alpha > 0, cfg.cutmix_alpha > 0
    if not (mixup_on or cutmix_on) or mix_coin >= cfg.mix_prob:
        return MixDraw("none", 1.0)
    use_cutmix = cutmix_on and (not mixup_on or switch_coin < cfg.switch_prob)
    alpha = cfg.cutmix_alpha if use_cutmix else cfg.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not use_cutmix:
        return MixDraw("mixup", lam)
    box = cutmix_box(lam, height, width, rng.random(2))
    top, left, bottom, right = box
    return MixDraw("cutmix", 1.0 - (bottom - top) * (right - left) / (height * width), box)


def mix_batch(images: np.ndarray, targets: np.ndarray, rngs: Sequence[np.random.Generator] | None,
              cfg: AugmentConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mixup or cutmix of ``images`` (N, 3, H, W) with the batch reversed; ``targets`` (N, C) blended alike.

    The inputs are never changed: a mixed batch comes back as new arrays. ``rngs`` None (evaluation), or both alphas 0, returns
    the inputs as they are and draws nothing.
    """
    if rngs is None or not (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0):
        return images, targets
    if not (len(rngs) == len(images) == len(targets)):
        raise ValueError(f"{len(rngs)} generators, {len(images)} images and {len(targets)} targets: "
                         f"one each per sample")
    draw = draw_mix(batch_generator(rngs), cfg, images.shape[2], images.shape[3])
    return apply_mix(images, targets, draw)


def apply_mix(images: np.ndarray, targets: np.ndarray, draw: MixDraw) -> tuple[np.ndarray, np.ndarray]:
    """``draw`` applied: each sample mixed with its partner in the reversed batch."""
    if draw.mode == "none":
        return images, targets
    partner = images[::-1]
    if draw.mode == "mixup":
        mixed = images * np.float32(draw.lam) + partner * np.float32(1.0 - draw.lam)
    else:
        top, left, bottom, right = draw.box
        mixed = images.copy()
        mixed[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
    soft = (targets * draw.lam + targets[::-1] * (1.0 - draw.lam)).astype(targets.dtype, copy=False)
    return mixed.astype(images.dtype, copy=False), soft
