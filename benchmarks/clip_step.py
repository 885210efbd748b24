"""Training-step time (forward of both towers, contrastive loss, backward) of tvp's CLIP against open_clip's
``CLIP`` with ``ClipLoss``, built from the same config.

Both models are built in this process from one tvp preset (``clip_config``;
ViT-B/32 by default: OpenAI's computation, QuickGELU, ``ln_pre``, bias-free
patches): tvp's ``CLIP`` with its own initialisation, open_clip's
``open_clip.model.CLIP(**config_to_open_clip(cfg))`` (``quick_gelu`` set by
the preset) with tvp's weights copied through ``weights_to_open_clip``.
``--size`` changes the image side (the position table follows), for a quick
check. The batch is random images (B, 3, S, S) and random captions (words of
CLIP's BPE vocabulary, 4 to 40 of them) tokenised by open_clip (context 77:
start token, ids, end-of-text 49407, zeros; long ones cut).

Before timing, in train mode (the mode timed; the presets have no dropout, so
it is deterministic), the normalised image and text features, the logit scale
and the loss (tvp's ``components.losses.contrastive.clip_loss`` against
``open_clip.loss.ClipLoss``) must agree within a tolerance, so that a cheaper
computation cannot win.

Each step: zero the gradients, forward, loss, backward. Same torch threads and
dtype (fp32) for both; steps alternate between the sides (which goes first
alternates too); each side's figure is the median of its repeats.
``--profile`` adds one profiled step per side after the timing and prints the
operators that take the most CPU time on each, to say where a gap comes from.

Run: ``.venv/bin/python benchmarks/clip_step.py [--preset ViT-B/32] [--batch 8] [--size 224] [--repeats 5]
[--threads N] [--profile]`` (about 2 minutes with 1 thread on a quiet core with the defaults).
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
from components.losses.contrastive import clip_loss  # noqa: E402
from components.models.clip import CLIP, clip_config  # noqa: E402
from components.models.clip_layouts import config_to_open_clip, weights_to_open_clip  # noqa: E402


def build(preset: str, size: int | None):
    """(tvp model, open_clip model, config) with the same weights, both in train mode."""
    from open_clip.model import CLIP as OpenClipCLIP

    cfg = clip_config(preset, vision=dict(image_size=size)) if size else clip_config(preset)
    torch.manual_seed(0)
    tvp = CLIP(cfg)
    reference = OpenClipCLIP(**config_to_open_clip(cfg))
    reference.load_state_dict(weights_to_open_clip(tvp.state_dict(), cfg), strict=True)
    return tvp.train(), reference.train(), cfg


def make_batch(batch: int, image_size: int, context_length: int):
    """Random images (B, 3, S, S) and open_clip's tokens (B, L) of random captions."""
    import open_clip
    from open_clip.tokenizer import _tokenizer

    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, image_size, image_size, generator=g)
    words = sorted(w[:-4] for w in _tokenizer.encoder if w.endswith("</w>") and w[:-4].isalpha())
    captions = []
    for _ in range(batch):
        count = int(torch.randint(4, 41, (1,), generator=g))
        picks = torch.randint(0, len(words), (count,), generator=g).tolist()
        captions.append(" ".join(words[i] for i in picks))
    return images, open_clip.tokenize(captions, context_length=context_length)


def compare(tvp, reference, reference_loss, images, tokens) -> None:
    """Assert the same normalised features, logit scale and loss in train mode; print the differences."""
    with torch.no_grad():
        ours = tvp(images, tokens)
        theirs = reference(images, tokens)
        losses = clip_loss(*ours).item(), reference_loss(*theirs).item()
    diffs = {name: (a - b).abs().max().item()
             for name, a, b in zip(("image features", "text features", "logit scale"), ours, theirs)}
    diffs["loss"] = abs(losses[0] - losses[1])
    tolerance = 1e-4
    print("same outputs in train mode: max |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
          + f" (tolerance {tolerance:g}); loss tvp {losses[0]:.5f}, reference {losses[1]:.5f}")
    assert max(diffs.values()) <= tolerance, f"outputs differ: {diffs}"


def step_seconds(run) -> tuple[float, float]:
    """One training step: (wall seconds, process CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - started, time.process_time() - cpu


def profile(sides: dict, rows: int = 15) -> None:
    """One profiled step per side: the operators with the most CPU time (self time, children excluded)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for side, run in sides.items():
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        print(f"\n-- profile of one {side} step (CPU self time) --")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ViT-B/32", help="a tvp CLIP preset (components.models.clip)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="image side (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile", action="store_true", help="profile one step per side after timing")
    args = parser.parse_args()

    from open_clip.loss import ClipLoss

    torch.set_num_threads(args.threads)
    tvp, reference, cfg = build(args.preset, args.size)
    reference_loss = ClipLoss()
    images, tokens = make_batch(args.batch, cfg.vision.image_size, cfg.text.context_length)
    compare(tvp, reference, reference_loss, images, tokens)

    def tvp_step():
        tvp.zero_grad(set_to_none=True)
        clip_loss(*tvp(images, tokens)).backward()

    def reference_step():
        reference.zero_grad(set_to_none=True)
        reference_loss(*reference(images, tokens)).backward()

    sides = {"tvp": tvp_step, "reference": reference_step}
    caption_tokens = (tokens != 0).sum(dim=1)
    print(f"CLIP {args.preset} ({sum(p.numel() for p in tvp.parameters()) / 1e6:.1f}M parameters), batch "
          f"{args.batch} x {cfg.vision.image_size}² pixels and {cfg.text.context_length} tokens "
          f"({caption_tokens.min().item()}-{caption_tokens.max().item()} filled), fp32, {args.threads} threads, "
          f"train mode, {args.warmup} warm-up + {args.repeats} timed steps per side, interleaved")
    medians = interleaved_medians(lambda side: step_seconds(sides[side]), args.warmup, args.repeats)
    if args.profile:
        profile(sides)
    tvp_s, ref_s = medians["tvp"]["wall"], medians["reference"]["wall"]
    name = "clip_" + args.preset.lower().replace("vit-", "").replace("/", "").replace("@", "_")
    if args.size and args.size != clip_config(args.preset).vision.image_size:
        name += f"_{args.size}px"
    print(f"RESULT metric={name}_step_s tvp={tvp_s:.3f} reference={ref_s:.3f} ratio={tvp_s / ref_s:.3f} "
          f"better=lower")


if __name__ == "__main__":
    main()
