import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from components.data.loading.image_augment import (
    DEFAULT_OPS, OPS, AugmentConfig, augment_images, decode_rgb, eval_images, random_resized_crop_box,
    randaugment_op,
)
from components.data.loading.mixing import (
    MixDraw, apply_mix, batch_generator, draw_mix, mix_batch, smoothed_targets,
)

PLAIN = AugmentConfig(image_size=32, crop=False, hflip=0.0, randaugment_ops=0, eval_crop_pct=1.0)


def photo(size: int = 32, seed: int = 0, grey: bool = False, height: int | None = None) -> np.ndarray:
    """A textured, low-contrast (40-200), left/right-asymmetric RGB picture."""
    rng = np.random.default_rng(seed)
    h = height or size
    y, x = np.mgrid[0:h, 0:size]
    base = 40 + 100 * x / size + 30 * np.sin(y / 3.0) + rng.integers(0, 30, (h, size))
    rgb = np.stack([base, base[::-1] * 0.8 + 30, np.roll(base, 5, axis=1)], axis=-1)
    if grey:
        rgb = np.repeat(base[..., None], 3, axis=-1)
    return np.clip(rgb, 40, 200).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


def rngs_for(ids, seed: int = 3, epoch: int = 0):
    return [np.random.default_rng([seed, epoch, i]) for i in ids]


IMAGES = [encode(photo(32, seed=i), "JPEG") for i in range(6)]


def test_same_seed_same_pixels_different_seed_different():
    cfg = AugmentConfig(image_size=24)
    a = augment_images(IMAGES, rngs_for(range(6)), cfg)
    b = augment_images(IMAGES, rngs_for(range(6)), cfg)
    c = augment_images(IMAGES, rngs_for(range(6), epoch=1), cfg)
    assert np.array_equal(a, b)
    assert all(not np.array_equal(a[i], c[i]) for i in range(6))


def test_a_sample_does_not_depend_on_its_batch():
    cfg = AugmentConfig(image_size=24)
    alone = augment_images(IMAGES[2:3], rngs_for([2]), cfg)[0]
    batch = augment_images([IMAGES[5], IMAGES[0], IMAGES[2]], rngs_for([5, 0, 2]), cfg)
    assert np.array_equal(batch[2], alone)


def test_shape_dtype_and_normalisation():
    pixels = photo(32)
    out = augment_images([encode(pixels)] * 2, rngs_for([0, 1]), PLAIN)
    expected = ((pixels / 255.0 - np.array(PLAIN.mean)) / np.array(PLAIN.std)).transpose(2, 0, 1)
    assert out.shape == (2, 3, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    np.testing.assert_allclose(eval_images([encode(pixels)], PLAIN)[0], expected, atol=1e-5)
    full = augment_images(IMAGES, rngs_for(range(6)), AugmentConfig(image_size=16))
    assert full.shape == (6, 3, 16, 16) and full.dtype == np.float32 and np.isfinite(full).all()
    # The fill colour is the mean, which normalises to 0.
    cfg = replace(PLAIN, randaugment_ops=1, randaugment_magnitude=10, randaugment_magnitude_std=0,
                  randaugment_prob=1.0, randaugment_op_names=("translate_x",))
    shifted = augment_images([encode(pixels)], rngs_for([0]), cfg)[0]
    assert np.count_nonzero(np.all(np.abs(shifted) < 0.02, axis=0)) >= 32 * 12


def test_eval_is_deterministic_and_crops_centrally():
    cfg = AugmentConfig(image_size=16)
    a, b = eval_images(IMAGES, cfg), eval_images(IMAGES, cfg)
    assert a.shape == (6, 3, 16, 16) and np.array_equal(a, b)
    assert np.array_equal(augment_images(IMAGES, None, cfg), a)
    # A non-square image: its central square, shorter side scaled to floor(16 / 0.875) = 18.
    wide = photo(48, height=24)
    got = eval_images([encode(wide)], cfg)[0]
    ref = Image.fromarray(wide).resize((36, 18), Image.Resampling.BICUBIC).crop((10, 1, 26, 17))
    ref = (np.asarray(ref) / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)
    assert np.abs(got - ref.transpose(2, 0, 1)).mean() < 0.1


def test_hflip_zero_never_flips_and_one_always_does():
    pixels = photo(32)
    data = [encode(pixels)] * 20
    expected = augment_images(data[:1], rngs_for([0]), PLAIN)[0]
    never = augment_images(data, rngs_for(range(20)), PLAIN)
    always = augment_images(data, rngs_for(range(20)), replace(PLAIN, hflip=1.0))
    assert all(np.array_equal(x, expected) for x in never)
    assert all(np.array_equal(x, expected[:, :, ::-1]) for x in always)
    half = augment_images(data, rngs_for(range(20)), replace(PLAIN, hflip=0.5))
    flipped = sum(np.array_equal(x, expected[:, :, ::-1]) for x in half)
    assert 3 <= flipped <= 17


@pytest.mark.parametrize("width,height", [(32, 32), (64, 40), (17, 90)])
def test_crop_box_respects_scale_and_ratio(width, height):
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    rng = np.random.default_rng(0)
    fallbacks = 0
    for _ in range(500):
        left, top, right, bottom = random_resized_crop_box(width, height, rng.random((10, 4)), scale, ratio)
        w, h = right - left, bottom - top
        assert -1e-9 <= left and -1e-9 <= top and right <= width + 1e-9 and bottom <= height + 1e-9
        share = w * h / (width * height)
        assert ratio[0] - 1e-9 <= w / h <= ratio[1] + 1e-9 or (w, h) == (width, height)
        if not scale[0] - 1e-9 <= share <= scale[1] + 1e-9:
            fallbacks += 1
    assert fallbacks == 0  # the fallback keeps area <= 1 and these shapes rarely need it
    # No try fits: the whole image cut centrally to the nearest allowed ratio.
    box = random_resized_crop_box(40, 40, np.full((10, 4), 0.5), (1.0, 1.0), (2.0, 3.0))
    assert box == pytest.approx((0.0, 10.0, 40.0, 30.0))


def test_crops_come_from_the_image():
    """A crop of a two-colour image (left red, right blue) at full scale shows both halves; at a tiny
    scale, one colour mostly."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, :32, 0] = 255
    pixels[:, 32:, 2] = 255
    cfg = replace(PLAIN, crop=True, scale=(0.01, 0.02))
    out = augment_images([encode(pixels)] * 8, rngs_for(range(8)), cfg)
    red = out[:, 0].mean(axis=(1, 2)) > out[:, 2].mean(axis=(1, 2))
    assert 0 < red.sum() < 8


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_op_at_magnitudes_zero_and_ten(name):
    for pixels in (photo(33, height=21), photo(31, grey=True)):
        img = Image.fromarray(pixels)
        for magnitude in (0, 10):
            for negative in (False, True):
                out = randaugment_op(img, name, magnitude, negative, fill=(124, 116, 104))
                assert out.mode == "RGB" and out.size == img.size
                changed = not np.array_equal(np.asarray(out), pixels)
                if magnitude == 0 and name not in ("auto_contrast", "equalize", "invert"):
                    assert not changed, f"{name} at magnitude 0 changed the image"
                if magnitude == 10 and not (name == "color" and _is_grey(pixels)):
                    assert changed, f"{name} at magnitude 10 left the image as it was"


def _is_grey(pixels: np.ndarray) -> bool:
    return bool(np.all(pixels[..., 0] == pixels[..., 1]) and np.all(pixels[..., 1] == pixels[..., 2]))


def test_randaugment_every_op_through_the_batch_function():
    cfg = AugmentConfig(image_size=21, randaugment_ops=3, randaugment_prob=1.0, randaugment_magnitude=10,
                        randaugment_op_names=tuple(OPS))
    grey = [encode(photo(29, seed=i, grey=True), "JPEG") for i in range(3)]
    out = augment_images(IMAGES + grey, rngs_for(range(9)), cfg)
    assert out.shape == (9, 3, 21, 21) and np.isfinite(out).all()
    off = replace(cfg, randaugment_magnitude=None)
    on_vs_off = augment_images(IMAGES, rngs_for(range(6)), off)
    assert not np.array_equal(out[:6], on_vs_off)


def test_config_is_checked():
    with pytest.raises(ValueError, match="randaugment_op_names"):
        AugmentConfig(randaugment_op_names=("rotate", "warp"))
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(0.5, 0.1))
    with pytest.raises(ValidationError, match="hflp"):
        TypeAdapter(AugmentConfig).validate_python({"hflp": 0.0})
    cfg = TypeAdapter(AugmentConfig).validate_python({"image_size": 32, "scale": [0.5, 1.0], "hflip": 0})
    assert cfg.scale == (0.5, 1.0) and cfg.fill_colour == (124, 116, 104)
    assert set(DEFAULT_OPS) <= set(OPS) and "invert" not in DEFAULT_OPS


def test_smoothed_targets():
    t = smoothed_targets([2, 0], 4, 0.1)
    assert t.shape == (2, 4) and t.dtype == np.float32
    np.testing.assert_allclose(t[0], [0.025, 0.025, 0.925, 0.025])
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(smoothed_targets([1], 3, 0.0), [[0, 1, 0]])
    with pytest.raises(ValueError, match="labels"):
        smoothed_targets([3], 3, 0.1)


def constant_batch(n: int = 6, size: int = 16) -> np.ndarray:
    """Sample i is filled with the value i."""
    return np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 3, size, size)).copy()


def test_cutmix_lambda_is_the_pasted_area():
    images, cfg = constant_batch(), AugmentConfig(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    targets = smoothed_targets(np.arange(6), 6, 0.0)
    seen_boxes = 0
    for epoch in range(20):
        mixed, soft = mix_batch(images, targets, rngs_for(range(6), epoch=epoch), cfg)
        np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
        for i in range(6):  # sample i's partner is 5 - i
            own = np.mean(mixed[i] == i)
            assert soft[i, i] == pytest.approx(own, abs=1e-6)
            assert soft[i, 5 - i] == pytest.approx(1.0 - own, abs=1e-6)
        seen_boxes += own < 1.0
    assert seen_boxes > 10
    assert np.array_equal(images, constant_batch())  # inputs untouched


def test_mixup_blends_images_and_targets_alike():
    images, cfg = constant_batch(5), AugmentConfig(mixup_alpha=0.8, cutmix_alpha=0.0)
    targets = smoothed_targets([0, 1, 2, 3, 4], 5, 0.1)
    mixed, soft = mix_batch(images, targets, rngs_for(range(5)), cfg)
    lam = (soft[0, 0] - targets[4, 0]) / (targets[0, 0] - targets[4, 0])
    np.testing.assert_allclose(mixed[0], lam * 0 + (1 - lam) * 4, atol=1e-5)
    np.testing.assert_allclose(mixed[2], 2.0, atol=1e-5)  # the middle one is its own partner
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)


def test_mix_draws_replay_and_evaluation_does_not_mix():
    cfg = AugmentConfig(image_size=16)
    images, targets = constant_batch(4), smoothed_targets([0, 1, 2, 3], 4, 0.1)

    def run(epoch):
        rngs = rngs_for(range(4), epoch=epoch)
        augment_images(IMAGES[:4], rngs, cfg)  # as in a transform: the per-image draws come first
        return mix_batch(images, targets, rngs, cfg)

    first, again = run(0), run(0)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    draws = {draw_mix(batch_generator(rngs_for(range(4), epoch=e)), cfg, 16, 16) for e in range(30)}
    assert {d.mode for d in draws} == {"mixup", "cutmix"} and len({d.lam for d in draws}) > 20  # cutmix areas are whole pixels
    assert mix_batch(images, targets, None, cfg) == (images, targets)
    none = replace(cfg, mix_prob=0.0)
    assert all(draw_mix(batch_generator(rngs_for(range(4), epoch=e)), none, 16, 16).mode == "none"
               for e in range(10))
    same = apply_mix(images, targets, MixDraw("none", 1.0))
    assert same[0] is images and same[1] is targets


def test_decode_expands_greyscale_and_palette():
    grey = Image.fromarray(photo(20)[..., 0])
    buf = io.BytesIO()
    grey.save(buf, "PNG")
    assert decode_rgb(buf.getvalue()).mode == "RGB"
    out = augment_images([buf.getvalue()], rngs_for([0]), AugmentConfig(image_size=8))
    assert out.shape == (1, 3, 8, 8)
