"""Training-step time (forward, Hungarian matching and set loss, backward) of tvp's DETR-R50 against
``transformers.DetrForObjectDetection`` computing its own loss, with the same config.

Both models are built in this process: HF's on a random timm ResNet-50 (the
released checkpoints' layout; 91 classes, 100 queries, 6+6 layers), tvp's from
its config through ``detr_hf`` with the weights copied. Dropout is 0 on both
sides, so train mode (the mode timed) is deterministic; both freeze the
backbone's stem and first stage, as DETR does (transformers 5.24 freezes
nothing of a timm backbone, so the benchmark freezes HF's by hand). The batch
holds images of two sizes, the smaller padded with a mask, and a few random
target boxes per image. tvp's loss is ``components.losses.detection.DetectionLoss``
(HF's costs and weights: 1, 5, 2, no-object weight 0.1).

Before timing, with auxiliary losses off on both sides, the outputs (logits,
boxes) and the loss must agree in train mode (relatively: a random ResNet-50
with frozen batch norm makes large activations). The timed steps then use
auxiliary losses (``--no-aux`` turns them off), as DETR trains: every decoder
layer is matched and scored. With them on, transformers 5.24 feeds each
decoder layer the previous one's normalised output, so its outputs differ from
DETR's (and from its own without them); the work is the same.

Each step: zero the gradients, forward, loss, backward. Same torch threads and
dtype for both; steps alternate between the sides (which goes first
alternates too); each side's figure is the median of its repeats.

Run: ``.venv/bin/python benchmarks/detr_step.py [--batch 2] [--size 320] [--repeats 5] [--dtype fp32|bf16]
[--threads N] [--no-aux]`` (about 2 minutes on 2 quiet cores with the defaults).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "benchmark_support"))  # shared helpers
from interleaved_steps import interleaved_medians  # noqa: E402
from components.losses.detection import DetectionLoss  # noqa: E402
from components.models.detr import DETR  # noqa: E402
from components.models.detr_hf import detr_config_from_hf, weights_from_hf  # noqa: E402


def build(aux: bool):
    """(HF model, tvp model) with the same weights, stem and first stage frozen on both."""
    import transformers

    torch.manual_seed(0)
    config = transformers.DetrConfig(use_timm_backbone=True, backbone="resnet50", use_pretrained_backbone=False,
                                     num_labels=91, dropout=0.0, attention_dropout=0.0, auxiliary_loss=aux)
    reference = transformers.DetrForObjectDetection(config)
    for name, p in reference.model.backbone.named_parameters():
        p.requires_grad_(any(f"layer{i}." in name for i in (2, 3, 4)))
    cfg = detr_config_from_hf(config.to_dict(), aux_loss=aux)
    tvp = DETR(cfg)
    tvp.load_state_dict(weights_from_hf(reference.state_dict(), cfg), strict=True)
    return reference.train(), tvp.train()


def make_batch(batch: int, size: int, objects: int):
    """Images (B, 3, S, S·6/5), half of them padded from S·4/5 × S, the mask, and per-image targets."""
    g = torch.Generator().manual_seed(1)
    height, width = size, size * 6 // 5
    images = torch.randn(batch, 3, height, width, generator=g)
    padding = torch.zeros(batch, height, width, dtype=torch.bool)
    padding[1::2, height * 4 // 5:] = True
    padding[1::2, :, size:] = True
    images[padding[:, None].expand_as(images)] = 0.0
    targets = []
    for _ in range(batch):
        centres = torch.rand(objects, 2, generator=g) * 0.6 + 0.2
        sides = torch.rand(objects, 2, generator=g) * 0.3 + 0.05
        labels = torch.randint(0, 91, (objects,), generator=g)
        targets.append({"labels": labels, "boxes": torch.cat([centres, sides], 1)})
    return images, padding, targets


def step_seconds(run) -> tuple[float, float]:
    """One training step: (wall seconds, process CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - started, time.process_time() - cpu


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp(min=1e-12)).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=320, help="image height; width is 6/5 of it")
    parser.add_argument("--objects", type=int, default=4, help="target boxes per image")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-aux", dest="aux", action="store_false", help="time without auxiliary losses")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    images, padding, targets = make_batch(args.batch, args.size, args.objects)
    pixel_mask = (~padding).long()
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    # the same outputs and loss in train mode, auxiliary losses off (where HF computes what DETR does)
    reference, tvp = build(aux=False)
    criterion = DetectionLoss(num_classes=91)
    with torch.no_grad(), torch.autocast(**autocast):
        theirs = reference(pixel_values=images, pixel_mask=pixel_mask, labels=labels)
        ours = tvp(images, padding)
        our_loss = criterion(ours, targets)["loss"]
    diffs = {"logits": relative_diff(ours["logits"], theirs.logits),
             "boxes": relative_diff(ours["boxes"], theirs.pred_boxes),
             "loss": relative_diff(our_loss, theirs.loss)}
    tolerance = 1e-4 if args.dtype == "fp32" else 5e-2
    print("same outputs in train mode (no aux): max relative diff " +
          ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + f" (tolerance {tolerance:g}); "
          f"loss tvp {our_loss.item():.4f}, reference {theirs.loss.item():.4f}")
    assert max(diffs.values()) <= tolerance, f"outputs differ: {diffs}"
    if args.aux:
        reference, tvp = build(aux=True)

    def tvp_step():
        tvp.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = criterion(tvp(images, padding), targets)["loss"]
        loss.backward()

    def reference_step():
        reference.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = reference(pixel_values=images, pixel_mask=pixel_mask, labels=labels).loss
        loss.backward()

    sides = {"tvp": tvp_step, "reference": reference_step}
    trainable = sum(p.numel() for p in tvp.parameters() if p.requires_grad) / 1e6
    print(f"DETR-R50 ({sum(p.numel() for p in tvp.parameters()) / 1e6:.1f}M parameters, {trainable:.1f}M trained), "
          f"batch {args.batch} x {images.shape[2]}x{images.shape[3]} pixels (every other image padded), "
          f"{args.objects} objects per image, aux losses {'on' if args.aux else 'off'}, {args.dtype}, "
          f"{args.threads} threads, train mode, {args.warmup} warm-up + {args.repeats} timed steps per side, "
          f"interleaved")
    medians = interleaved_medians(lambda side: step_seconds(sides[side]), args.warmup, args.repeats)
    tvp_s, ref_s = medians["tvp"]["wall"], medians["reference"]["wall"]
    name = "detr_r50" + ("" if args.aux else "_noaux") + ("" if args.dtype == "fp32" else f"_{args.dtype}")
    print(f"RESULT metric={name}_step_s tvp={tvp_s:.3f} reference={ref_s:.3f} ratio={tvp_s / ref_s:.3f} better=lower")


if __name__ == "__main__":
    main()
