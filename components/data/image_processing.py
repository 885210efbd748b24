"""Decoding, validating, resizing and re-encoding images: pure functions, no Ray.

Failures are ``ImageError`` with a short ``category`` (``decode``, ``too_large``,
``too_small``) so that stages can count them per category instead of crashing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image

ResizeMode = Literal["no", "border", "center_crop"]


@dataclass
class ImageConfig:
    image_size: int = 224  # output side in pixels (CLIP and ViT inputs)
    resize_mode: ResizeMode = "border"  # border: fit inside and pad; center_crop: fill and crop
    jpeg_quality: int = 95
    max_pixels: int = 64_000_000  # larger images are refused as decompression bombs
    min_size: int = 1  # images with a smaller side are refused

    __pydantic_config__ = {"extra": "forbid"}


class ImageError(ValueError):
    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes to an RGB image, refusing more than ``max_pixels`` before decoding pixels."""
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise ImageError("too_large", f"{width}x{height} exceeds the {max_pixels}-pixel limit")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        return img.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", str(exc)) from exc
    except Exception as exc:  # PIL raises many types for corrupt data
        raise ImageError("decode", f"cannot decode image: {exc}") from exc


def resize_image(img: Image.Image, size: int, mode: ResizeMode) -> Image.Image:
    """Resize to a ``size`` square (``border``, ``center_crop``) or leave as is (``no``)."""
    if mode == "no":
        return img
    width, height = img.size
    if mode == "border":
        scale = size / max(width, height)
        new = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(img.resize(new, Image.Resampling.BICUBIC), ((size - new[0]) // 2, (size - new[1]) // 2))
        return canvas
    if mode == "center_crop":
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        img = img.resize(new, Image.Resampling.BICUBIC)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return img.crop((left, top, left + size, top + size))
    raise ValueError(f"unknown resize mode {mode!r}")


def process_image(data: bytes, cfg: ImageConfig) -> tuple[bytes, int, int]:
    """Decode, check, resize and re-encode one image: (jpeg bytes, original width, original height)."""
    img = decode_image(data, cfg.max_pixels)
    width, height = img.size
    if min(width, height) < cfg.min_size:
        raise ImageError("too_small", f"{width}x{height} is below the minimum side {cfg.min_size}")
    out = io.BytesIO()
    resize_image(img, cfg.image_size, cfg.resize_mode).save(out, format="JPEG", quality=cfg.jpeg_quality)
    return out.getvalue(), width, height
