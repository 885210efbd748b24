"""tvp's stored thumbnails are as faithful as img2dataset's, measured on real photos.

The photos ship inside installed packages (scikit-learn, scikit-image and, when present, matplotlib), so the
test needs no network. Each is saved as a camera would (JPEG quality 90), at its own size and enlarged 1.5x,
and turned into thumbnails by tvp (``process_image``) and by img2dataset's algorithm, rebuilt here from
img2dataset 1.47's resizer: ``cv2.imdecode(IMREAD_UNCHANGED)``, ``INTER_AREA`` to shrink and
``INTER_LANCZOS4`` to enlarge, ``cv2.imencode`` at quality 95. Both are scored by PSNR against two float
references made from Pillow's full decode of the same input: a Lanczos resize and an exact area average.
A third, deliberately worse path (Pillow's reduced JPEG decode to the output size, then bilinear) shows
that the scores can tell a lossy resize apart, so the comparison can fail.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import skimage
from PIL import Image
from sklearn.datasets import load_sample_image

from components.data.ingest.image_processing import ImageConfig, process_image

DOWNSCALE_SIZES = (64, 128, 256)  # the longest output side; used where smaller than the photo's
UPSCALE_SIZES = (256, 320)  # asked of the photo shrunk to UPSCALE_SOURCE, where larger than it
UPSCALE_SOURCE = 0.4
CAMERA_QUALITY = 90
STORED_QUALITY = 95  # img2dataset's default, and tvp's
# tvp decodes, resamples and encodes as img2dataset does, so the two should score the same; the tolerance
# only absorbs a rare DCT-reduced decode (tvp's, where 8x headroom remains).
TOLERANCE_DB = 0.05
# The worse path loses 1-3 dB on these photos; a scoring that could not see 0.5 dB would prove nothing.
WORSE_MARGIN_DB = 0.5


def photos() -> dict[str, np.ndarray]:
    """Real RGB photos, by name, from the packages installed with tvp (matplotlib's only when it is there)."""
    found = {name: load_sample_image(name) for name in ("china.jpg", "flower.jpg")}
    shipped = Path(skimage.__file__).parent / "data"
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"):
        found[name] = np.asarray(Image.open(shipped / name).convert("RGB"))
    try:  # not a dependency of tvp: one photo more where it happens to be installed
        import matplotlib

        hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            found["grace_hopper.jpg"] = np.asarray(Image.open(hopper).convert("RGB"))
    except ImportError:
        pass
    return found


def camera_jpeg(pixels: np.ndarray, scale: float) -> bytes:
    img = Image.fromarray(pixels)
    if scale != 1:
        size = (round(img.width * scale), round(img.height * scale))
        img = img.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=CAMERA_QUALITY)  # Pillow's default 4:2:0, as cameras store
    return out.getvalue()


def img2dataset_thumbnail(data: bytes, size: int) -> bytes:
    """img2dataset 1.47's keep_ratio_largest path for an opaque JPEG (resizer.py with albumentations)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    height, width = img.shape[:2]
    downscale = max(width, height) > size
    scale = size / max(width, height)
    out = (round(width * scale), round(height * scale))  # albumentations' longest_max_size
    img = cv2.resize(img, out, interpolation=cv2.INTER_AREA if downscale else cv2.INTER_LANCZOS4)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, STORED_QUALITY])[1].tobytes()


def worse_thumbnail(data: bytes, out: tuple[int, int]) -> bytes:
    """A fast path that loses detail: the JPEG decoded at a reduced DCT scale close to the output, then bilinear."""
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", out)
    pixels = np.asarray(img.convert("RGB").resize(out, Image.Resampling.BILINEAR))
    return cv2.imencode(".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, STORED_QUALITY])[1].tobytes()


def lanczos_reference(full: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """Pillow's Lanczos in float ("F" mode) per channel: no rounding to 8 bits on the way."""
    channels = [np.asarray(Image.fromarray(full[..., c].astype(np.float32), "F").resize(out, Image.Resampling.LANCZOS))
                for c in range(3)]
    return np.clip(np.stack(channels, -1).astype(np.float64), 0, 255)  # a stored pixel cannot overshoot either


def coverage(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: the share of output pixel i's span [i, i+1) * n_in / n_out that source pixel j covers."""
    step = n_in / n_out
    starts = np.arange(n_out)[:, None] * step
    left = np.maximum(starts, np.arange(n_in)[None, :])
    right = np.minimum(starts + step, np.arange(n_in)[None, :] + 1)
    return np.clip(right - left, 0, None) / step


def area_reference(full: np.ndarray, out: tuple[int, int]) -> np.ndarray:
    """The exact area average: every source pixel weighted by how much of the output pixel it covers.

    The reference for shrinking; enlarged, it is nearly nearest-neighbour, which a bilinear path resembles
    more than Lanczos does (hence the worse path's higher score there).
    """
    wy, wx = coverage(full.shape[0], out[1]), coverage(full.shape[1], out[0])
    return np.stack([wy @ full[..., c] @ wx.T for c in range(3)], -1)


def decoded(jpg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB"), dtype=np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a - b) ** 2)))


def cases() -> list[tuple[str, bytes, int]]:
    """(direction, input JPEG, asked size) for every photo: two inputs to shrink, one to enlarge."""
    found = []
    for pixels in photos().values():
        for scale in (1, 1.5):
            data = camera_jpeg(pixels, scale)
            longest = round(max(pixels.shape[:2]) * scale)
            found += [("down", data, size) for size in DOWNSCALE_SIZES if size < longest]
        data = camera_jpeg(pixels, UPSCALE_SOURCE)
        longest = round(max(pixels.shape[:2]) * UPSCALE_SOURCE)
        found += [("up", data, size) for size in UPSCALE_SIZES if size > longest]
    return found


def test_tvp_thumbnails_are_as_faithful_as_img2datasets():
    paths = ("tvp", "img2dataset", "worse")
    scores = {(ref, d, path): [] for ref in ("lanczos", "area") for d in ("down", "up") for path in paths}
    sizes = {path: 0 for path in paths}
    identical = 0  # thumbnails tvp stores byte for byte as img2dataset does
    last_data, full = None, None
    for direction, data, size in cases():
        if data is not last_data:  # the references start from Pillow's full decode of the input
            last_data, full = data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64)
        cfg = ImageConfig(image_size=size, resize_mode="keep_ratio_largest", jpeg_quality=STORED_QUALITY)
        ours = process_image(data, cfg)[0]
        theirs = img2dataset_thumbnail(data, size)
        identical += ours == theirs
        out = decoded(ours).shape[1::-1]
        stored = {"tvp": ours, "img2dataset": theirs, "worse": worse_thumbnail(data, out)}
        references = {"lanczos": lanczos_reference(full, out), "area": area_reference(full, out)}
        for path, jpg in stored.items():
            pixels = decoded(jpg)
            assert pixels.shape[1::-1] == out, (path, size)
            sizes[path] += len(jpg)
            for ref, truth in references.items():
                scores[ref, direction, path].append(psnr(pixels, truth))

    def mean(ref: str, path: str, directions: tuple[str, ...] = ("down", "up")) -> float:
        return float(np.mean([score for d in directions for score in scores[ref, d, path]]))

    count = len(scores["area", "down", "tvp"]) + len(scores["area", "up", "tvp"])
    print(f"\n{count} thumbnails ({identical} byte-identical in tvp and img2dataset); mean PSNR (dB) against each "
          "reference; bytes summed over all thumbnails")
    print(f"{'reference':<16}{'tvp':>8}{'img2dataset':>13}{'worse':>8}")
    for ref, direction in [(r, d) for r in ("lanczos", "area") for d in ("down", "up", "all")]:
        row = [mean(ref, p, ("down", "up") if direction == "all" else (direction,)) for p in paths]
        print(f"{ref + ' ' + direction:<16}{row[0]:>8.2f}{row[1]:>13.2f}{row[2]:>8.2f}")
    print(f"{'bytes':<16}{sizes['tvp']:>8}{sizes['img2dataset']:>13}{sizes['worse']:>8}")

    for ref in ("lanczos", "area"):
        ours, theirs = mean(ref, "tvp"), mean(ref, "img2dataset")
        assert ours >= theirs - TOLERANCE_DB, (ref, ours, theirs)
    gaps = [mean(ref, "img2dataset") - mean(ref, "worse") for ref in ("lanczos", "area")]
    assert max(gaps) > WORSE_MARGIN_DB, gaps  # the scoring sees a lossy path: this test can fail
