import io

import numpy as np
import pytest
from PIL import Image

from components.data.image_batches import images_to_array
from components.data.image_processing import ImageConfig, ImageError, decode_image, process_image, resize_image


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
