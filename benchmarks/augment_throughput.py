"""Training augmentation throughput: tvp's ``augment_images`` against torchvision's transforms v2.

Both sides take the same JPEG bytes (scikit-image's sample photos, resized to
the benchmark's side, quality 90) to normalised float32 arrays of that side:
decode, random resized crop (bicubic), horizontal flip, RandAugment with 2
ops at magnitude 9, to float, normalise. The reference is the classic
torchvision pipeline on PIL images, ``RandomResizedCrop + RandomHorizontalFlip
+ RandAugment + ToImage + ToDtype(scale) + Normalize`` (v2's ToTensor), one
torch thread, images stacked into a batch as a DataLoader's collate does.
tvp's side includes making one seeded generator per sample, and uses its
default recipe (timm's: each drawn op applied with probability 0.5, magnitude
noise 0.5); torchvision applies both drawn ops always (one of its 14 is the
identity), so per image it does somewhat more work. Mixup/cutmix is not
timed (torchvision's is a batch op on tensors; both are cheap). Rounds
alternate between the two sides; the median round counts. Rates are images
per second of the process's CPU time (every thread's), because both sides
run on one thread and the machine is often shared; wall-clock rates are
printed beside them.

    .venv/bin/python benchmarks/augment_throughput.py [--size 224] [--images 512] [--rounds 3]

RESULT: images per CPU second of each side at --size (higher is better); the other sizes
measured are printed above it.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.loading.image_augment import AugmentConfig, augment_images  # noqa: E402

BATCH = 64
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "cat", "colorwheel", "camera")


def sample_jpegs(size: int, count: int) -> list[bytes]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        side = min(img.size)
        img = img.crop(((img.width - side) // 2, (img.height - side) // 2,
                        (img.width + side) // 2, (img.height + side) // 2))
        buf = io.BytesIO()
        img.resize((size, size), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(count)]


def tvp_side(images: list[bytes], size: int, epoch: int) -> tuple[float, float]:
    cfg = AugmentConfig(image_size=size)
    started = _clocks()
    for start in range(0, len(images), BATCH):
        batch = images[start:start + BATCH]
        rngs = [np.random.default_rng([0, epoch, start + k]) for k in range(len(batch))]
        augment_images(batch, rngs, cfg)
    return _rates(len(images), started)


def _clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _rates(count: int, started: tuple[float, float]) -> tuple[float, float]:
    """Images per CPU second and per wall-clock second since ``started``."""
    cpu, wall = _clocks()
    return count / (cpu - started[0]), count / (wall - started[1])


def reference_side(images: list[bytes], size: int, epoch: int) -> tuple[float, float]:
    import torch
    from torchvision.transforms import InterpolationMode, v2

    torch.manual_seed(epoch)
    cfg = AugmentConfig(image_size=size)
    transform = v2.Compose([
        v2.RandomResizedCrop(size, scale=cfg.scale, ratio=cfg.ratio, interpolation=InterpolationMode.BICUBIC),
        v2.RandomHorizontalFlip(cfg.hflip),
        v2.RandAugment(num_ops=2, magnitude=9),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(cfg.mean), list(cfg.std)),
    ])
    started = _clocks()
    for start in range(0, len(images), BATCH):
        batch = images[start:start + BATCH]
        torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB")) for data in batch])
    return _rates(len(images), started)


def measure(size: int, count: int, rounds: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(CPU, wall) rates of tvp and of the reference: the median of each over the rounds."""
    images = sample_jpegs(size, count)
    tvp_side(images[:BATCH], size, 99)  # warm-up: imports, caches
    reference_side(images[:BATCH], size, 99)
    tvp, ref = [], []
    for r in range(rounds):
        tvp.append(tvp_side(images, size, r))
        ref.append(reference_side(images, size, r))
    return _medians(tvp), _medians(ref)


def _medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def report(size: int, tvp: tuple[float, float], ref: tuple[float, float]) -> None:
    print(f"{size} px: tvp {tvp[0]:.0f} images/CPU-s ({1e3 / tvp[0]:.3f} ms each; {tvp[1]:.0f}/s wall), "
          f"torchvision v2 {ref[0]:.0f} images/CPU-s ({1e3 / ref[0]:.3f} ms each; {ref[1]:.0f}/s wall), "
          f"ratio {tvp[0] / ref[0]:.2f} (wall {tvp[1] / ref[1]:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="side of the RESULT line's images")
    parser.add_argument("--images", type=int, default=512, help="images per round at --size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--small", type=int, default=32, help="also measure this side (0 = skip)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    if args.small:
        scale = max(1, (args.size // args.small) ** 2 // 4)
        report(args.small, *measure(args.small, args.images * scale, args.rounds))
    tvp, ref = measure(args.size, args.images, args.rounds)
    report(args.size, tvp, ref)
    print(f"RESULT metric=augment_images_per_s tvp={tvp[0]:.1f} reference={ref[0]:.1f} "
          f"ratio={tvp[0] / ref[0]:.3f} better=higher")


if __name__ == "__main__":
    main()
