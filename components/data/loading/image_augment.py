"""Training-time image augmentation for classifiers (DeiT's recipe): pure per-batch functions, numpy and PIL only.

One image's path through ``augment_image``, in this order:

- **random resized crop** (``crop``): a box of ``scale`` × the image's area
  (uniform) and aspect ratio in ``ratio`` (log-uniform), at a uniform
  position; up to 10 tries for a box that fits, else the whole image cut
  centrally to the nearest allowed ratio (the usual fallback). The box is
  continuous (float corners) and resampled to ``image_size`` in one step, so
  its area is never rounded out of ``scale``. With ``crop`` off the image is
  only resized to ``image_size`` (nothing at all when it is that size).
- **horizontal flip** with probability ``hflip``.
- **RandAugment**: ``randaugment_ops`` operations drawn with replacement from
  ``randaugment_op_names``, each applied with probability ``randaugment_prob``
  (timm's 0.5), at a magnitude drawn from N(``randaugment_magnitude``,
  ``randaugment_magnitude_std``) clipped to [0, 10] (timm's ``mstd``; 0 keeps
  it fixed). Magnitude m gives each op the strength ``m / 10`` of its maximum
  (``OPS``), with a random sign where the op has one (timm's "increasing"
  variants): 10 is the strongest, 0 leaves every op but autocontrast,
  equalize and invert (which have no strength) as the identity.
- **normalisation**: pixels / 255, less ``mean``, over ``std``, as float32
  (N, 3, S, S).

Geometric ops fill uncovered pixels with ``fill``, by default the ``mean``
colour, which normalises to 0.

Reproducibility: every random number of image i comes from ``rngs[i]`` alone,
drawn in a fixed order (crop tries, flip coin, RandAugment choices) whose
count depends only on the config. So the same sample with the same generator
(seeded by seed, epoch and sample id) gets the same pixels in any batch, at
any position, and a resumed epoch replays them exactly.

Evaluation (``eval_images``) is deterministic: the shorter side is scaled to
``floor(image_size / eval_crop_pct)`` and the central ``image_size`` square
kept (DeiT's 0.875: 256 → 224), done as one bicubic resample of the matching
source box. With ``eval_crop_pct`` 1 an image of ``image_size`` passes as it
is; choose 1 when training without crops, or for small images whose border
matters (digits), so evaluation sees the scale training saw.

Mixing samples (mixup, cutmix) and soft targets are in ``mixing.py``; their
settings live in ``AugmentConfig`` too, so one config describes the recipe.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CROP_TRIES = 10  # boxes tried before the central fallback
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


# -- RandAugment operations --------------------------------------------------------------------------------------
# Each takes an RGB image, a level in [-1, 1] (its share of the op's maximum strength, signed) and the fill
# colour; unsigned ops get |level|. Maxima follow RandAugment's table (timm, torchvision).

MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3  # horizontal (or vertical) shift per pixel of distance from the centre
MAX_TRANSLATE = 0.45  # of the image's side
MAX_ENHANCE = 0.9  # enhancement factor 1 ± this: 0.1 (washed out, dark, blurred) to 1.9
MAX_POSTERIZE_BITS_DROPPED = 4  # 8 bits kept at level 0, 4 at level 1


def _affine(img: Image.Image, coeffs: tuple[float, ...], fill: tuple[int, int, int]) -> Image.Image:
    """``coeffs`` map output (x, y) to input (a x + b y + c, d x + e y + f), PIL's convention."""
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill)


def _rotate(img, level, fill):
    return img.rotate(level * MAX_ROTATE_DEGREES, Image.Resampling.BILINEAR, fillcolor=fill)


def _shear_x(img, level, fill):  # about the centre row, so the middle of the picture stays put
    s = level * MAX_SHEAR
    return _affine(img, (1.0, s, -s * img.height / 2, 0.0, 1.0, 0.0), fill)


def _shear_y(img, level, fill):
    s = level * MAX_SHEAR
    return _affine(img, (1.0, 0.0, 0.0, s, 1.0, -s * img.width / 2), fill)


def _translate_x(img, level, fill):
    return _affine(img, (1.0, 0.0, level * MAX_TRANSLATE * img.width, 0.0, 1.0, 0.0), fill)


def _translate_y(img, level, fill):
    return _affine(img, (1.0, 0.0, 0.0, 0.0, 1.0, level * MAX_TRANSLATE * img.height), fill)


def _enhancer(kind: type) -> Callable:
    def apply(img, level, fill):
        return kind(img).enhance(1.0 + level * MAX_ENHANCE)
    return apply


def _posterize(img, level, fill):
    return ImageOps.posterize(img, 8 - int(round(abs(level) * MAX_POSTERIZE_BITS_DROPPED)))


def _solarize(img, level, fill):  # inverts pixels at or above the threshold: 256 (none) down to 0 (all)
    return ImageOps.solarize(img, int(round(256 * (1.0 - abs(level)))))


class Op(NamedTuple):
    apply: Callable[[Image.Image, float, tuple[int, int, int]], Image.Image]
    signed: bool  # whether the strength takes a random sign


OPS: dict[str, Op] = {
    "auto_contrast": Op(lambda img, level, fill: ImageOps.autocontrast(img), False),
    "equalize": Op(lambda img, level, fill: ImageOps.equalize(img), False),
    "invert": Op(lambda img, level, fill: ImageOps.invert(img), False),
    "rotate": Op(_rotate, True),
    "posterize": Op(_posterize, False),
    "solarize": Op(_solarize, False),
    "color": Op(_enhancer(ImageEnhance.Color), True),  # saturation
    "contrast": Op(_enhancer(ImageEnhance.Contrast), True),
    "brightness": Op(_enhancer(ImageEnhance.Brightness), True),
    "sharpness": Op(_enhancer(ImageEnhance.Sharpness), True),
    "shear_x": Op(_shear_x, True),
    "shear_y": Op(_shear_y, True),
    "translate_x": Op(_translate_x, True),
    "translate_y": Op(_translate_y, True),
}

# RandAugment's list (torchvision's, less identity); invert is there to add by name.
DEFAULT_OPS = ("auto_contrast", "equalize", "rotate", "posterize", "solarize", "color", "contrast", "brightness",
               "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")


def randaugment_op(img: Image.Image, name: str, magnitude: float, negative: bool = False,
                   fill: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """One op of ``OPS`` on an RGB image at ``magnitude`` in [0, 10]; ``negative`` flips a signed op's direction."""
    op = OPS[name]
    level = min(max(magnitude, 0.0), 10.0) / 10.0
    return op.apply(img, -level if (negative and op.signed) else level, fill)


# -- the config -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentConfig:
    """A classifier's training augmentation and its evaluation resize (defaults: DeiT's recipe)."""

    image_size: int = 224  # output side S in pixels: (N, 3, S, S)
    crop: bool = True  # random resized crop; False only resizes to image_size
    scale: tuple[float, float] = (0.08, 1.0)  # crop area as a share of the image's, uniform in this range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop width / height, log-uniform in this range
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"  # resampling of crops and evaluation resizes
    hflip: float = 0.5  # probability of a horizontal flip; 0 where mirror images change meaning (digits, text)
    randaugment_ops: int = 2  # operations per image; 0 = RandAugment off
    randaugment_magnitude: float | None = 9.0  # strength on a 0-10 scale; 0 or None = RandAugment off
    randaugment_magnitude_std: float = 0.5  # per-op noise on the magnitude (timm's mstd); 0 = fixed
    randaugment_prob: float = 0.5  # chance that each drawn op is applied (timm's 0.5; torchvision's 1.0)
    randaugment_op_names: tuple[str, ...] = DEFAULT_OPS  # names from OPS the ops are drawn from, uniformly
    fill: tuple[int, int, int] | None = None  # RGB of pixels that geometric ops uncover; None = the mean colour
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel mean of pixels in [0, 1], subtracted
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel standard deviation, divided by
    eval_crop_pct: float = 0.875  # evaluation keeps this central share of the shorter side; 1 = resize only
    mixup_alpha: float = 0.8  # mixup's λ ~ Beta(α, α); 0 = no mixup
    cutmix_alpha: float = 1.0  # cutmix's λ ~ Beta(α, α); 0 = no cutmix
    mix_prob: float = 1.0  # chance that a batch is mixed at all
    switch_prob: float = 0.5  # chance of cutmix rather than mixup when both are on
    label_smoothing: float = 0.1  # ε: the true class gets 1 - ε + ε/C, every other class ε/C

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}

    def __post_init__(self):
        problems = []
        if self.image_size < 1:
            problems.append(f"image_size is {self.image_size}: it must be positive")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            problems.append(f"scale is {self.scale}: it must satisfy 0 < low <= high <= 1")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            problems.append(f"ratio is {self.ratio}: it must satisfy 0 < low <= high")
        for name in ("hflip", "randaugment_prob", "mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} is {getattr(self, name)}: it must lie in [0, 1]")
        if self.randaugment_ops < 0:
            problems.append(f"randaugment_ops is {self.randaugment_ops}: it must be at least 0")
        if self.randaugment_magnitude is not None and not 0.0 <= self.randaugment_magnitude <= 10.0:
            problems.append(f"randaugment_magnitude is {self.randaugment_magnitude}: it must lie in [0, 10]")
        if self.randaugment_magnitude_std < 0:
            problems.append(f"randaugment_magnitude_std is {self.randaugment_magnitude_std}: it must be >= 0")
        unknown = [n for n in self.randaugment_op_names if n not in OPS]
        if unknown or not self.randaugment_op_names:
            problems.append(f"randaugment_op_names {list(self.randaugment_op_names)}: each must be one of "
                            f"{', '.join(OPS)}, and at least one given")
        if not 0.0 < self.eval_crop_pct <= 1.0:
            problems.append(f"eval_crop_pct is {self.eval_crop_pct}: it must lie in (0, 1]")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            problems.append(f"mixup_alpha {self.mixup_alpha} and cutmix_alpha {self.cutmix_alpha} must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing is {self.label_smoothing}: it must lie in [0, 1)")
        if min(self.std) <= 0:
            problems.append(f"std is {self.std}: every channel's must be positive")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def randaugment_on(self) -> bool:
        return self.randaugment_ops > 0 and bool(self.randaugment_magnitude)

    @property
    def fill_colour(self) -> tuple[int, int, int]:
        if self.fill is not None:
            return tuple(int(c) for c in self.fill)
        return tuple(int(round(255 * m)) for m in self.mean)


# -- one image ---------------------------------------------------------------------------------------------------

def random_resized_crop_box(width: int, height: int, draws: np.ndarray, scale: tuple[float, float],
                            ratio: tuple[float, float]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a crop, from ``draws`` (tries, 4) uniforms in [0, 1):
    area share, log aspect ratio, x position, y position. The first try that fits wins; if none
    does, the whole image cut centrally to the nearest ratio in ``ratio``."""
    area = float(width * height)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for u_area, u_ratio, u_x, u_y in draws.tolist():
        target = area * (scale[0] + u_area * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w, h = math.sqrt(target * aspect), math.sqrt(target / aspect)
        if w <= width and h <= height:
            left, top = u_x * (width - w), u_y * (height - h)
            return left, top, left + w, top + h
    aspect = width / height
    w, h = float(width), float(height)
    if aspect < ratio[0]:
        h = w / ratio[0]
    elif aspect > ratio[1]:
        w = h * ratio[1]
    left, top = (width - w) / 2, (height - h) / 2
    return left, top, left + w, top + h


def augment_image(img: Image.Image, rng: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    """One RGB image, cropped, flipped and RandAugmented with ``rng``'s draws: an image_size square."""
    size = (cfg.image_size, cfg.image_size)
    resample = _RESAMPLE[cfg.interpolation]
    if cfg.crop:
        box = random_resized_crop_box(img.width, img.height, rng.random((_CROP_TRIES, 4)), cfg.scale, cfg.ratio)
        img = img.resize(size, resample, box=box)
    elif img.size != size:
        img = img.resize(size, resample)
    if cfg.hflip > 0 and rng.random() < cfg.hflip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if cfg.randaugment_on:
        img = _randaugment(img, rng, cfg)
    return img


def _randaugment(img: Image.Image, rng: np.random.Generator, cfg: AugmentConfig) -> Image.Image:
    n, names = cfg.randaugment_ops, cfg.randaugment_op_names
    chosen = rng.integers(0, len(names), size=n)
    coins = rng.random((n, 2))  # applied?, negative?
    noise = rng.standard_normal(n) if cfg.randaugment_magnitude_std > 0 else np.zeros(n)
    fill = cfg.fill_colour
    for k in range(n):
        if coins[k, 0] >= cfg.randaugment_prob:
            continue
        magnitude = cfg.randaugment_magnitude + cfg.randaugment_magnitude_std * noise[k]
        img = randaugment_op(img, names[chosen[k]], magnitude, bool(coins[k, 1] < 0.5), fill)
    return img


def eval_image(img: Image.Image, cfg: AugmentConfig) -> Image.Image:
    """Shorter side scaled to floor(image_size / eval_crop_pct), central image_size square kept (one resample)."""
    s = cfg.image_size
    if img.size == (s, s) and cfg.eval_crop_pct >= 1.0:
        return img
    factor = math.floor(s / cfg.eval_crop_pct) / min(img.size)  # output pixels per source pixel
    side = s / factor  # the source extent that becomes the output's side
    left, top = (img.width - side) / 2, (img.height - side) / 2
    return img.resize((s, s), _RESAMPLE[cfg.interpolation], box=(left, top, left + side, top + side))


# -- batches -----------------------------------------------------------------------------------------------------

def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes (JPEG, PNG, ...) as an RGB PIL image; greyscale and palette images are expanded."""
    img = Image.open(io.BytesIO(data))
    return img if img.mode == "RGB" else img.convert("RGB")


class _Normaliser:
    def __init__(self, cfg: AugmentConfig):
        std = np.asarray(cfg.std, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std))[:, None, None]
        self.offset = (-np.asarray(cfg.mean, dtype=np.float32) / std)[:, None, None]

    def into(self, img: Image.Image, out: np.ndarray) -> None:
        """(3, S, S) float32 ``out`` = (pixels / 255 - mean) / std."""
        pixels = np.asarray(img).transpose(2, 0, 1)  # (3, S, S) uint8
        np.multiply(pixels, self.scale, out=out)
        out += self.offset


def augment_images(encoded: Sequence[bytes], rngs: Sequence[np.random.Generator] | None,
                   cfg: AugmentConfig) -> np.ndarray:
    """Encoded images → (N, 3, S, S) float32, normalised; image i drawn from ``rngs[i]`` alone.

    ``rngs`` None (evaluation) gives ``eval_images``.
    """
    if rngs is None:
        return eval_images(encoded, cfg)
    if len(rngs) != len(encoded):
        raise ValueError(f"{len(rngs)} generators for {len(encoded)} images: one per image")
    s = cfg.image_size
    out = np.empty((len(encoded), 3, s, s), dtype=np.float32)
    norm = _Normaliser(cfg)
    for i, (data, rng) in enumerate(zip(encoded, rngs)):
        norm.into(augment_image(decode_rgb(data), rng, cfg), out[i])
    return out


def eval_images(encoded: Sequence[bytes], cfg: AugmentConfig) -> np.ndarray:
    """Encoded images → (N, 3, S, S) float32, normalised, deterministic (``eval_image``)."""
    s = cfg.image_size
    out = np.empty((len(encoded), 3, s, s), dtype=np.float32)
    norm = _Normaliser(cfg)
    for i, data in enumerate(encoded):
        norm.into(eval_image(decode_rgb(data), cfg), out[i])
    return out
