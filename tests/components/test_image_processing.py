import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from components.data.loading.image_batches import images_to_array
from components.data.ingest.decode_budget import DecodeBudget
from components.data.ingest.image_processing import (
    ImageConfig,
    ImageError,
    _jpeg_is_whole,
    decode_image,
    encode_jpeg,
    process_image,
    resize_image,
)


def png_bytes(width: int, height: int, color=(200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def test_border_fits_inside_and_pads_to_a_square():
    img = resize_image(Image.new("RGB", (40, 20), (255, 255, 255)), 16, "border")
    assert img.size == (16, 16)
    pixels = np.asarray(img)
    assert pixels[0, 8].sum() == 0  # padding rows are black
    assert pixels[8, 8].min() > 200  # the image sits in the middle


def test_center_crop_fills_the_square():
    img = resize_image(Image.new("RGB", (40, 20), (255, 255, 255)), 16, "center_crop")
    assert img.size == (16, 16)
    assert np.asarray(img).min() > 200


def test_no_resize_keeps_the_size():
    assert resize_image(Image.new("RGB", (40, 20)), 16, "no").size == (40, 20)


def test_process_image_converts_grey_to_rgb_jpeg():
    grey = io.BytesIO()
    Image.new("L", (30, 30), 128).save(grey, format="PNG")
    jpg, width, height = process_image(grey.getvalue(), ImageConfig(image_size=8))
    out = Image.open(io.BytesIO(jpg))
    assert (out.format, out.mode, out.size, width, height) == ("JPEG", "RGB", (8, 8), 30, 30)


@pytest.mark.parametrize(
    "data, category",
    [
        (b"not an image at all", "decode"),
        (png_bytes(64, 64)[:60], "decode"),  # truncated
    ],
)
def test_corrupt_images_are_categorised_errors(data, category):
    with pytest.raises(ImageError) as err:
        process_image(data, ImageConfig(image_size=8))
    assert err.value.category == category


def test_decompression_bombs_are_refused_before_decoding():
    with pytest.raises(ImageError) as err:
        decode_image(png_bytes(300, 300), max_pixels=10_000)
    assert err.value.category == "too_large"


def test_too_small_images_are_refused():
    with pytest.raises(ImageError) as err:
        process_image(png_bytes(4, 40), ImageConfig(image_size=8, min_size=5))
    assert err.value.category == "too_small"


def test_images_to_array_normalises_per_channel():
    arr = images_to_array([png_bytes(8, 8, (255, 0, 0))], 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert arr.shape == (1, 3, 8, 8) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[0, :, 0, 0], [1.0, -1.0, -1.0], atol=1e-6)


def jpeg_bytes(arr: np.ndarray, quality: int = 95) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def gradient(width: int, height: int) -> np.ndarray:
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    return np.stack([y, x, 255 - y], -1).astype(np.uint8)


def decoded(jpg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpg)), dtype=np.float64)


@pytest.mark.parametrize(
    "mode, size",
    [("keep_ratio", (32, 16)), ("keep_ratio_largest", (16, 8)), ("border", (16, 16)), ("center_crop", (16, 16))],
)
def test_resize_modes_follow_img2dataset(mode, size):
    assert resize_image(Image.new("RGB", (40, 20)), 16, mode).size == size


def test_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_image(Image.new("RGB", (40, 20)), 16, "stretch")


def test_center_crop_keeps_the_middle():
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :] = (255, 0, 0)
    arr[:, 20:40] = (0, 255, 0)
    jpg, width, height = process_image(png_bytes_of(arr), ImageConfig(image_size=8, resize_mode="center_crop"))
    out = decoded(jpg)
    assert (out.shape, width, height) == ((8, 8, 3), 60, 20)
    assert out[..., 1].min() > 200 and out[..., 0].max() < 60


def png_bytes_of(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("width, height", [(1280, 853), (640, 427), (1000, 750)])
@pytest.mark.parametrize("mode", ["border", "keep_ratio", "center_crop"])
def test_reduced_jpeg_decoding_matches_the_full_decode(width, height, mode):
    data = jpeg_bytes(gradient(width, height))
    full = decoded(encode_jpeg(resize_image(decode_image(data, 10**8), 64, mode), 95))
    jpg, w, h = process_image(data, ImageConfig(image_size=64, resize_mode=mode))
    fast = decoded(jpg)
    assert (w, h) == (width, height) and fast.shape == full.shape
    assert np.abs(fast - full).mean() < 0.75  # resampling the whole reduced image would shift it


def test_draft_resamples_the_exact_area_of_a_partial_last_row():
    from components.data.ingest.image_processing import _draft

    img = Image.open(io.BytesIO(jpeg_bytes(gradient(1280, 853))))
    area = _draft(img, (64, 43), (0, 0, 1280, 853))
    assert img.size == (160, 107)  # 853 / 8 rounds up: the last row is partial
    assert area == (0, 0, 160, 853 / 8)


def test_no_resize_keeps_the_original_size():
    jpg, width, height = process_image(png_bytes(30, 20), ImageConfig(image_size=8, resize_mode="no"))
    assert decoded(jpg).shape == (20, 30, 3) and (width, height) == (30, 20)


def test_grey_jpeg_is_reduced_and_made_rgb():
    grey = io.BytesIO()
    Image.new("L", (800, 600), 90).save(grey, format="JPEG")
    jpg, _, _ = process_image(grey.getvalue(), ImageConfig(image_size=32, resize_mode="keep_ratio_largest"))
    out = Image.open(io.BytesIO(jpg))
    assert (out.mode, out.size) == ("RGB", (32, 24))


def test_transparent_pixels_become_white():
    rgba = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(rgba, format="PNG")
    jpg, _, _ = process_image(rgba.getvalue(), ImageConfig(image_size=8, resize_mode="keep_ratio"))
    assert decoded(jpg).min() > 240


def test_aspect_ratio_filter():
    data = png_bytes(100, 10)
    assert process_image(data, ImageConfig(image_size=8))[1:] == (100, 10)  # 0 = off
    with pytest.raises(ImageError) as err:
        process_image(data, ImageConfig(image_size=8, max_aspect_ratio=3.0))
    assert err.value.category == "aspect_ratio"


def png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims another size: a decompression bomb in a few bytes."""
    data = bytearray(png_bytes(1, 1))
    ihdr = bytearray(data[12:29])  # b"IHDR" + width + height + 5 bytes
    ihdr[4:12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[12:29] = ihdr
    data[29:33] = zlib.crc32(ihdr).to_bytes(4, "big")
    return bytes(data)


def test_size_filters_need_only_the_header():
    header_only = png_with_size(4, 40)  # its pixels would not decode: refused for size first
    with pytest.raises(ImageError) as err:
        process_image(header_only, ImageConfig(image_size=8, min_size=5))
    assert err.value.category == "too_small"


@pytest.mark.parametrize("side", [10_000, 60_000])  # over our limit; over Pillow's own bomb limit too
def test_decompression_bombs_are_counted_failures(side):
    with pytest.raises(ImageError) as err:
        process_image(png_with_size(side, side), ImageConfig(image_size=8))
    assert err.value.category == "too_large"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


@pytest.mark.parametrize("photo", ["china.jpg", "flower.jpg"])
def test_fast_path_keeps_at_least_img2datasets_fidelity(photo):
    """The reduced decode and resize stay as close to a Lanczos resize of the full image as area averaging does.

    Area averaging of the full decode is img2dataset's path (OpenCV INTER_AREA; Pillow's BOX is the same
    filter). A faster resize that loses detail (bilinear after the reduced decode: 3-5 dB worse) fails here.
    """
    from sklearn.datasets import load_sample_image

    source = Image.fromarray(load_sample_image(photo))
    source = source.resize((source.width * 3 // 2, source.height * 3 // 2), Image.Resampling.LANCZOS)
    data = jpeg_bytes(np.asarray(source))
    full = Image.open(io.BytesIO(data)).convert("RGB")
    ours, area = [], []
    for size in (64, 128, 200, 256):
        cfg = ImageConfig(image_size=size, resize_mode="keep_ratio_largest", jpeg_quality=100)
        jpg, _, _ = process_image(data, cfg)
        fast = decoded(jpg)
        out = (fast.shape[1], fast.shape[0])
        truth = np.asarray(full.resize(out, Image.Resampling.LANCZOS))
        ours.append(psnr(fast, truth))
        area.append(psnr(decoded(encode_jpeg(full.resize(out, Image.Resampling.BOX), 100)), truth))
    assert np.mean(ours) >= np.mean(area) and min(np.subtract(ours, area)) > -0.5, (ours, area)


# --- EXIF orientation, colour modes, refused formats, cut files (process_image's two decoders) ---

RED, GREEN, BLUE, WHITE = (220, 30, 30), (30, 190, 30), (30, 30, 220), (240, 240, 240)
# How Pillow's ImageOps.exif_transpose turns a stored image upright, per EXIF orientation; the inverse (the
# same for all but 6 and 8) stores an upright picture as a camera held that way would.
_STORE_AS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}


def quadrants(width: int, height: int) -> Image.Image:
    """An upright, non-square picture with a distinct colour in each quadrant: any turn or flip shows."""
    arr = np.empty((height, width, 3), np.uint8)
    arr[: height // 2, : width // 2], arr[: height // 2, width // 2 :] = RED, GREEN
    arr[height // 2 :, : width // 2], arr[height // 2 :, width // 2 :] = BLUE, WHITE
    return Image.fromarray(arr)


def stored_with_orientation(upright: Image.Image, orientation: int, fmt: str, mode: str = "RGB") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    upright.transpose(_STORE_AS[orientation]).convert(mode).save(out, format=fmt, exif=exif.tobytes())
    data = out.getvalue()
    # The test's own construction, checked by Pillow's reading of the tag: shown upright, it is the picture.
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    assert shown.size == upright.size and np.abs(np.subtract(shown, upright, dtype=float)).mean() < 8
    return data


def assert_quadrants(pixels: np.ndarray) -> None:
    """Each quadrant's middle has its colour (JPEG blurs only the edges between them)."""
    height, width = pixels.shape[:2]
    for (y, x), colour in zip([(1, 1), (1, 3), (3, 1), (3, 3)], [RED, GREEN, BLUE, WHITE]):
        np.testing.assert_allclose(pixels[y * height // 4, x * width // 4], colour, atol=40)


@pytest.mark.parametrize("orientation", range(2, 9))
@pytest.mark.parametrize(
    "fmt, mode, side",
    [("JPEG", "RGB", 64),  # OpenCV's decoder (which is told to ignore the tag: tvp turns the picture itself)
     ("PNG", "RGB", 64),  # Pillow's, with EXIF in a PNG chunk
     ("JPEG", "CMYK", 640)],  # Pillow's, decoded at a reduced scale: the original size must still be reported
)
def test_exif_orientation_is_applied(orientation, fmt, mode, side):
    data = stored_with_orientation(quadrants(side, side // 2), orientation, fmt, mode)
    jpg, width, height = process_image(data, ImageConfig(image_size=32, resize_mode="keep_ratio_largest"))
    out = decoded(jpg)
    assert out.shape == (16, 32, 3) and (width, height) == (side, side // 2)  # upright: wider than high
    assert_quadrants(out)


def test_cmyk_jpeg_becomes_rgb_with_its_colour():
    cmyk = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 128, 255, 64)).save(cmyk, format="JPEG", quality=95)
    out = decoded(process_image(cmyk.getvalue(), ImageConfig(image_size=16))[0])
    np.testing.assert_allclose(out[8, 8], (191, 95, 0), atol=12)  # (255 - c)(255 - k) / 255: Pillow's conversion


def test_palette_png_transparency_index_is_laid_over_white():
    indices = np.zeros((32, 32), np.uint8)
    indices[:, 16:] = 1
    img = Image.fromarray(indices, "P")
    img.putpalette([0, 0, 0, 0, 0, 255])  # index 0, the transparent one, is black: ignoring it would show black
    out_file = io.BytesIO()
    img.save(out_file, format="PNG", transparency=0)
    out = decoded(process_image(out_file.getvalue(), ImageConfig(image_size=32, resize_mode="keep_ratio"))[0])
    np.testing.assert_allclose(out[16, 6], WHITE, atol=16)
    np.testing.assert_allclose(out[16, 26], (0, 0, 255), atol=16)


def test_sixteen_bit_grey_png_keeps_its_grey_levels():
    wide = np.full((32, 32), 0x4000, np.uint16)
    wide[:, 16:] = 0xC000
    img = Image.fromarray(wide)
    assert img.mode == "I;16"
    png = io.BytesIO()
    img.save(png, format="PNG")
    out = decoded(process_image(png.getvalue(), ImageConfig(image_size=32, resize_mode="keep_ratio"))[0])
    np.testing.assert_allclose(out[16, 6], (64, 64, 64), atol=3)  # the high byte; Pillow's convert clips to 255
    np.testing.assert_allclose(out[16, 26], (192, 192, 192), atol=3)


def test_half_transparent_red_over_white_is_pink():
    rgba = io.BytesIO()
    Image.new("RGBA", (16, 16), (255, 0, 0, 128)).save(rgba, format="PNG")
    out = decoded(process_image(rgba.getvalue(), ImageConfig(image_size=8))[0])
    np.testing.assert_allclose(out[4, 4], (255, 127, 127), atol=6)  # 128/255 red, the rest white


def test_grey_jpeg_keeps_its_level_in_three_channels():
    grey = io.BytesIO()
    Image.new("L", (40, 30), 90).save(grey, format="JPEG")
    out = decoded(process_image(grey.getvalue(), ImageConfig(image_size=16))[0])
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[8, 8], (90, 90, 90), atol=2)


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO"])
def test_formats_pillow_reads_but_tvp_does_not_accept_are_refused_by_name(fmt):
    data = io.BytesIO()
    Image.new("RGB", (16, 16), RED).save(data, format=fmt)
    with pytest.raises(ImageError, match=f"{fmt} images are not accepted") as err:
        process_image(data.getvalue(), ImageConfig(image_size=8))
    assert err.value.category == "format"


def test_random_bytes_are_a_decode_failure():
    with pytest.raises(ImageError) as err:
        process_image(np.random.default_rng(0).bytes(4096), ImageConfig(image_size=8))
    assert err.value.category == "decode"


def noisy_jpeg(width: int = 256, height: int = 192) -> bytes:
    noise = np.random.default_rng(0).integers(0, 40, (height, width, 3))
    return jpeg_bytes((gradient(width, height) * 0.8 + noise).astype(np.uint8))


def test_a_cut_jpeg_is_a_decode_failure():
    data = noisy_jpeg()
    cut = data[: len(data) // 2]
    assert not _jpeg_is_whole(cut)  # so Pillow decodes it, which refuses a cut file (OpenCV would fill it in)
    with pytest.raises(ImageError) as err:
        process_image(cut, ImageConfig(image_size=64))
    assert err.value.category == "decode"


def test_padding_after_a_jpegs_end_marker_is_harmless():
    data = noisy_jpeg()
    cfg = ImageConfig(image_size=64)
    budget = DecodeBudget(10**9)
    assert process_image(data + b"\x00" * 7, cfg, budget) == process_image(data, cfg)
    assert budget.peak == 256 * 192 * 3  # OpenCV's decoder took it, holding 3 bytes a pixel (Pillow's path: 7)


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims another size: a decompression bomb in a few bytes."""
    data = bytearray(jpeg_bytes(gradient(16, 16)))
    sof = data.index(b"\xff\xc0")  # marker, length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("side", [10_000, 60_000])  # over our limit; over Pillow's own bomb limit too
def test_jpeg_decompression_bombs_are_refused_from_the_header(side):
    with pytest.raises(ImageError) as err:
        process_image(jpeg_with_size(side, side), ImageConfig(image_size=8))
    assert err.value.category == "too_large"


def test_a_real_jpeg_over_max_pixels_is_too_large():
    with pytest.raises(ImageError) as err:
        process_image(noisy_jpeg(), ImageConfig(image_size=8, max_pixels=256 * 192 - 1))
    assert err.value.category == "too_large"
