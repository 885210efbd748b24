"""Forward+backward time per batch of tvp's ViT against timm's ``VisionTransformer`` with the same config.

Both models are built in this process from one timm architecture (ViT-B/16 at
224 pixels, 1000 classes, dropout and drop path 0 by default), tvp's from
``vit_layouts.config_from_timm`` with the reference's weights copied through
``weights_from_timm``, and first shown to give the same logits in train mode
(the mode timed) on the benchmark's batch. Then each step is: zero the
gradients, forward, cross-entropy against fixed random labels, backward. The
same torch thread count and dtype apply to both. Steps alternate between the
sides (which one goes first alternates too) and each side's figure is the
median over its repeats. The process's CPU time per step is printed too: on a
machine shared with other work it moves less than the wall-clock time, which
is what the RESULT reports.

Run: ``.venv/bin/python benchmarks/vit_step.py [--model vit_base_patch16_224] [--batch 8] [--repeats 5]
[--dtype fp32|bf16] [--threads N]`` (about 2 minutes on 2 quiet cores with the defaults).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "benchmark_support"))  # shared helpers
from interleaved_steps import interleaved_medians  # noqa: E402
from components.models.vit import VisionTransformer  # noqa: E402
from components.models.vit_layouts import config_from_timm, weights_from_timm  # noqa: E402


def step_seconds(model, images, labels, autocast_dtype) -> tuple[float, float]:
    """One training step's forward and backward (gradients zeroed first): (wall seconds, process CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = F.cross_entropy(model(images).float(), labels)
    loss.backward()
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224", help="a plain timm ViT architecture")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    import timm

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = timm.create_model(args.model, pretrained=False, num_classes=1000, drop_rate=0.0,
                                  drop_path_rate=0.0)
    cfg = config_from_timm(args.model, num_classes=1000)
    tvp = VisionTransformer(cfg)
    tvp.load_state_dict(weights_from_timm(reference.state_dict()), strict=True)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size, generator=g)
    labels = torch.randint(0, cfg.num_classes, (args.batch,), generator=g)
    autocast_dtype = torch.bfloat16 if args.dtype == "bf16" else None

    tvp.train(), reference.train()  # the mode timed; with no dropout and no drop path it is deterministic
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_dtype is not None):
        diff = (tvp(images).float() - reference(images).float()).abs().max().item()
    tolerance = 1e-4 if autocast_dtype is None else 0.25
    print(f"same outputs in train mode: max |logit diff| {diff:.2e} (tolerance {tolerance:g})")
    assert diff <= tolerance, f"outputs differ by {diff}"

    sides = {"tvp": tvp, "reference": reference}
    print(f"{args.model} ({sum(p.numel() for p in tvp.parameters()) / 1e6:.1f}M parameters), batch {args.batch} x "
          f"{cfg.image_size}² pixels, {args.dtype}, {args.threads} threads, train mode, "
          f"{args.warmup} warm-up + {args.repeats} timed steps per side, interleaved")
    medians = interleaved_medians(lambda side: step_seconds(sides[side], images, labels, autocast_dtype),
                                  args.warmup, args.repeats)
    tvp_s, ref_s = medians["tvp"]["wall"], medians["reference"]["wall"]
    name = "vit_b16" if args.model == "vit_base_patch16_224" else args.model
    name += "" if args.dtype == "fp32" else f"_{args.dtype}"
    print(f"RESULT metric={name}_step_s tvp={tvp_s:.3f} reference={ref_s:.3f} "
          f"ratio={tvp_s / ref_s:.3f} better=lower")


if __name__ == "__main__":
    main()
