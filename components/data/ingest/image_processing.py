"""Decoding, validating, resizing and re-encoding images: pure functions, no Ray.

Failures are ``ImageError`` with a short ``category`` (``decode``, ``format``,
``too_large``, ``too_small``, ``aspect_ratio``) so that stages can count them
per category instead of crashing.

The path of one image (``process_image``):

1. The header only: the format must be one of ``ACCEPTED_FORMATS``; the size
   is checked against ``max_pixels`` (decompression bombs), the smallest side
   and the aspect ratio before any pixel is decoded.
2. Decode (libjpeg-turbo). A JPEG much larger than its output is decoded at
   1/2, 1/4 or 1/8 scale inside the DCT, but only while at least
   ``DCT_HEADROOM`` times the output size remains, so that an exact area
   average still makes the final reduction: closer than that, the DCT-scaled
   image measurably loses fidelity (0.3-1.2 dB, ``benchmarks/README.md``).
3. Resample with OpenCV and img2dataset's filters: exact area averaging to
   shrink, Lanczos to enlarge. A JPEG goes through OpenCV's decoder and
   encoder too (about twice as fast as Pillow's into an array), so tvp stores
   the pixels img2dataset stores, at its fidelity
   (``tests/components/test_image_fidelity.py``); Pillow's bicubic, the
   earlier path, was 1.2 dB further from an area-average reference.
4. Turn the picture upright by its EXIF orientation (after resizing: cheaper),
   pad for ``border``, encode as JPEG (4:2:0, like img2dataset's OpenCV).

Colour modes: transparent pixels are laid over white; palette, grey, CMYK and
16-bit images become 8-bit RGB.
"""

from __future__ import annotations

import io
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar, get_args

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from components.data.ingest import ingest_defaults as defaults
from components.data.ingest.decode_budget import DecodeBudget
from components.data.ingest.ingest_defaults import ResizeMode

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels

# What image files may hold; anything else is a ``format`` failure. Pillow reads more (EPS through Ghostscript,
# PSD, ...), but a web table's image is one of these, and every extra parser is attack surface.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG includes MPO (phone cameras)
DCT_HEADROOM = 8  # decode JPEGs at a reduced scale only while this many times the output size remains
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as img2dataset does
_PADDING = (0, 0, 0)  # black in any channel order
# Bytes held per decoded pixel on the way to the thumbnail: Pillow keeps RGB in 4 bytes, the array for OpenCV
# is 3 and OpenCV's channel swap 3 more; a mode that needs converting (alpha, palette, CMYK, grey, 16-bit)
# adds another 4-byte image.
_BYTES_PER_PIXEL_RGB = 10
_BYTES_PER_PIXEL_CONVERTED = 14

Image.init()  # registers every plugin, so that Image.open(formats=...) knows them all
cv2.setNumThreads(1)  # parallelism comes from the rows processed at once; OpenCV's own pool would oversubscribe

_ORIENTATION = range(1, 9)  # EXIF orientation values (tag 0x0112); 1 is upright


@dataclass
class ImageConfig:
    image_size: int = defaults.IMAGE_SIZE  # output side in pixels (CLIP and ViT inputs)
    resize_mode: ResizeMode = defaults.RESIZE_MODE  # see ResizeMode
    jpeg_quality: int = defaults.JPEG_QUALITY
    max_pixels: int = defaults.MAX_PIXELS  # larger images are refused as decompression bombs, from the header
    min_size: int = defaults.MIN_IMAGE_SIZE  # images with a smaller side are refused (too_small)
    max_aspect_ratio: float = defaults.MAX_ASPECT_RATIO  # longer side / shorter side above this is refused; 0 = off

    __pydantic_config__: ClassVar[dict] = {"extra": "forbid"}


class ImageError(ValueError):
    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and refuse more than ``max_pixels`` before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError("too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        kind = _other_format(data)
        if kind:
            raise ImageError("format", f"{kind} images are not accepted (accepted: {', '.join(ACCEPTED_FORMATS)})") from exc
        raise ImageError("decode", f"cannot decode image: {exc}") from exc
    except Exception as exc:  # PIL raises many types for data that is no image
        raise ImageError("decode", f"cannot decode image: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageError("too_large", f"{width}x{height} exceeds the {max_pixels}-pixel limit")
    return img


def _other_format(data: bytes) -> str | None:
    """The name of a format Pillow knows but we do not accept, for the error message (None: no image)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:
        return None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey: keep the high byte (convert would clip)
        wide = np.asarray(img)
        # I;16 is 16-bit by definition; 32-bit "I" may hold 8-bit values (then kept as they are).
        shift = img.mode.startswith("I;16") or wide.max() > 255
        return Image.fromarray((wide >> 8 if shift else wide).astype(np.uint8)).convert("RGB")
    if "A" in img.mode or "transparency" in img.info:
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _BACKGROUND)
        canvas.paste(rgba, mask=rgba)  # blends by alpha: the same as compositing over an opaque white
        return canvas
    return img.convert("RGB")


def _load_rgb(img: Image.Image) -> Image.Image:
    """Decode the pixels (truncated or corrupt data fails here) and make them RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. palette transparency notes: the result is what counts
            img.load()
            return _to_rgb(img)
    except Exception as exc:
        raise ImageError("decode", f"cannot decode image: {exc}") from exc


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode bytes to a full-size RGB image, refusing more than ``max_pixels`` before decoding pixels."""
    return _load_rgb(open_image(data, max_pixels))


def check_size(width: int, height: int, cfg: ImageConfig) -> None:
    """The filters that need only the header: smallest side and aspect ratio."""
    if min(width, height) < cfg.min_size:
        raise ImageError("too_small", f"{width}x{height} is below the minimum side {cfg.min_size}")
    ratio = max(width, height) / max(1, min(width, height))
    if cfg.max_aspect_ratio and ratio > cfg.max_aspect_ratio:
        raise ImageError("aspect_ratio", f"{width}x{height} has aspect ratio {ratio:.2f} > {cfg.max_aspect_ratio}")


def resize_plan(width: int, height: int, size: int, mode: ResizeMode) -> tuple[tuple[int, int], Box] | None:
    """Size of the resized image and the source area it shows; None when ``mode`` keeps the image."""
    if mode not in get_args(ResizeMode):
        raise ValueError(f"unknown resize mode {mode!r}")
    if mode == "no":
        return None
    if mode == "center_crop":  # crop in source pixels, so only the kept middle is resampled
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return (size, size), (left, top, left + side, top + side)
    longest = mode in ("border", "keep_ratio_largest")
    scale = size / (max(width, height) if longest else min(width, height))
    return (max(1, round(width * scale)), max(1, round(height * scale))), (0, 0, width, height)


def _resample_pixels(pixels: np.ndarray, out: tuple[int, int], area: Box) -> np.ndarray:
    """``area`` of ``pixels`` (H x W x 3) resized to ``out``: area averaging to shrink, Lanczos to enlarge.

    OpenCV resizes whole pixels, so the area is cut at the nearest pixel edges (at most half a source pixel
    off; the draft keeps at least DCT_HEADROOM source pixels per output pixel when it reduces).
    """
    height, width = pixels.shape[:2]
    left, top = min(max(0, round(area[0])), width - 1), min(max(0, round(area[1])), height - 1)
    right, bottom = max(left + 1, min(width, round(area[2]))), max(top + 1, min(height, round(area[3])))
    region = pixels[top:bottom, left:right]
    if (right - left, bottom - top) == out:
        return np.ascontiguousarray(region)
    shrinking = out[0] * out[1] < (right - left) * (bottom - top)
    return cv2.resize(region, out, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)


def resize_image(img: Image.Image, size: int, mode: ResizeMode) -> Image.Image:
    """Resize a decoded RGB image by ``mode``: a ``size`` square (border, center_crop) or one side ``size``."""
    plan = resize_plan(img.width, img.height, size, mode)
    if plan is None:
        return img
    pixels = _resample_pixels(np.asarray(img), *plan)
    return Image.fromarray(_pad_pixels(pixels, size) if mode == "border" else pixels)


def _draft(img: Image.Image, out: tuple[int, int], area: Box) -> Box:
    """Ask a JPEG decoder for 1/2, 1/4 or 1/8 scale, never below ``out``; ``area`` rescaled.

    Scaling in the DCT skips most of the decode work. The reduced image's last
    row and column may be partial, so the exact area (not the whole image)
    must be resampled, or the picture shifts by up to a pixel.
    """
    full_width = img.width
    needed = (
        math.ceil(img.width * out[0] / (area[2] - area[0])),
        math.ceil(img.height * out[1] / (area[3] - area[1])),
    )
    reduced = img.draft("RGB", needed)  # None for other formats: nothing changes
    if reduced is None:
        return area
    scale = full_width / reduced[1][2]
    return (area[0] / scale, area[1] / scale, area[2] / scale, area[3] / scale)


def encode_jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)  # Pillow's default chroma subsampling is 4:2:0, as OpenCV's
    return out.getvalue()


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 = upright, also for a missing or broken EXIF block)."""
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block does not make the pixels unusable
        return 1
    return value if value in _ORIENTATION else 1


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` (H x W x C) turned as EXIF orientation ``orientation`` asks."""
    if orientation in (5, 6, 7, 8):
        pixels = pixels.transpose(1, 0, 2)  # 5: transpose; the others are a flip of it
        orientation = {5: 1, 6: 2, 7: 3, 8: 4}[orientation]
    if orientation in (2, 3):
        pixels = pixels[:, ::-1]
    if orientation in (3, 4):
        pixels = pixels[::-1]
    return np.ascontiguousarray(pixels)


def _pad_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    height, width = pixels.shape[:2]
    top, left = (size - height) // 2, (size - width) // 2
    return cv2.copyMakeBorder(pixels, top, size - height - top, left, size - width - left, cv2.BORDER_CONSTANT,
                              value=_PADDING)


def _jpeg_is_whole(data: bytes) -> bool:
    """Whether a JPEG ends with its end-of-image marker (a cut download does not; trailing padding allowed)."""
    return data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")


def _dct_factor(img: Image.Image, out: tuple[int, int], area: Box) -> int:
    """The largest JPEG reduction (1, 2, 4, 8) that leaves DCT_HEADROOM source pixels per output pixel."""
    factor = 1
    while factor < 8 and min((area[2] - area[0]) / (2 * factor) / out[0],
                             (area[3] - area[1]) / (2 * factor) / out[1]) >= DCT_HEADROOM:
        factor *= 2
    return factor


_CV2_JPEG_FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                   8: cv2.IMREAD_REDUCED_COLOR_8}


def _decode_jpeg(data: bytes, factor: int) -> np.ndarray:
    """A JPEG through OpenCV (img2dataset's decoder, about twice as fast as Pillow's into an array): BGR."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), _CV2_JPEG_FLAGS[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.ndim != 3:
        raise ImageError("decode", "cannot decode image: OpenCV could not decode this JPEG")
    return pixels


def _decode_other(img: Image.Image) -> np.ndarray:
    """Any accepted image through Pillow (modes, palettes, transparency, 16 bits): BGR."""
    return cv2.cvtColor(np.asarray(_load_rgb(img)), cv2.COLOR_RGB2BGR)


def _decoded_bytes(img: Image.Image) -> int:
    per_pixel = _BYTES_PER_PIXEL_RGB if img.mode == "RGB" else _BYTES_PER_PIXEL_CONVERTED
    return img.width * img.height * per_pixel


def process_image(data: bytes, cfg: ImageConfig, budget: DecodeBudget | None = None) -> tuple[bytes, int, int]:
    """Decode, check, resize and re-encode one image: (jpeg bytes, original width, original height).

    The original size is the upright one (after EXIF orientation). With a ``budget``, full-size pixels are
    decoded only once their share of it is free.
    """
    img = open_image(data, cfg.max_pixels)
    width, height = img.size  # as stored (a reduced decode below shrinks img.size)
    check_size(width, height, cfg)  # before decoding: a refused image costs only its header; turning changes nothing
    # Every plan scales both axes alike and keeps the middle, so planning in the stored orientation and
    # turning the result upright gives what planning upright would.
    plan = resize_plan(img.width, img.height, cfg.image_size, cfg.resize_mode)
    # CMYK and cut JPEGs go through Pillow: it converts CMYK right and refuses a truncated file.
    through_opencv = img.format in ("JPEG", "MPO") and img.mode in ("RGB", "L") and _jpeg_is_whole(data)
    if through_opencv:
        factor = 1 if plan is None else _dct_factor(img, *plan)
        area = None if plan is None else tuple(v / factor for v in plan[1])
        cost = math.ceil(img.width / factor) * math.ceil(img.height / factor) * 3
    else:
        area = None if plan is None else _draft(img, (plan[0][0] * DCT_HEADROOM, plan[0][1] * DCT_HEADROOM), plan[1])
        cost = _decoded_bytes(img)
    # The share is held until the full-size pixels are gone (resampled to the output size).
    with budget.hold(cost) if budget else nullcontext():
        pixels = _decode_jpeg(data, factor) if through_opencv else _decode_other(img)
        # Read only now: to find EXIF (which may follow the pixels) Pillow decodes a whole PNG, which before
        # decoding would happen outside the budget, in every thread at once.
        orientation = _orientation(img)
        img.close()  # Pillow's decoded copy too must be gone when the share is handed back
        if plan is not None:
            pixels = _resample_pixels(pixels, plan[0], area)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    pixels = _upright(pixels, orientation)
    if plan is not None and cfg.resize_mode == "border":
        pixels = _pad_pixels(pixels, cfg.image_size)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise ImageError("encode", "cannot encode the resized image as JPEG")
    return encoded.tobytes(), width, height
