"""Forward+backward time per batch of tvp's BERT against ``transformers.BertForPreTraining`` with the same config.

Both models are built in this process from one config (BERT-base by default),
tvp's with the reference's weights copied through ``bert_hf.weights_from_hf``,
and first shown to give the same MLM and NSP logits in eval mode on the
benchmark's batch. Then, in train mode (dropout on, as in pretraining), each
step is: zero the gradients, forward on the full batch, the same loss on both
sides (cross-entropy of the MLM logits at the masked 15 % of positions, with
the vocabulary projection computed at every position on both sides, plus the
NSP cross-entropy), backward. The batch has two segments per row and padding
in half of the rows. The same torch thread count and dtype apply to both.
Steps alternate between the sides (which one goes first alternates too) and
each side's figure is the median over its repeats. The process's CPU time per
step is printed too: on a machine shared with other work it moves less than
the wall-clock time, which is what the RESULT reports.

Run: ``.venv/bin/python benchmarks/bert_step.py [--preset base] [--batch 8] [--seq 128] [--repeats 6]
[--dtype fp32|bf16] [--threads N]`` (about 3 minutes on 2 quiet cores with the defaults).
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
from components.models.bert import BERT_PRESETS, BertForPreTraining  # noqa: E402
from components.models.bert_hf import bert_config_from_hf, weights_from_hf  # noqa: E402


def make_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens in two segments, the odd rows padded to 3/4 of the length, 15 % of real positions masked."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    valid = torch.ones(batch, seq, dtype=torch.long)
    valid[1::2, (3 * seq) // 4:] = 0
    ids[valid == 0] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    types[valid == 0] = 0
    chosen = (torch.rand(batch, seq, generator=g) < 0.15) & valid.bool()
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return {"ids": ids, "types": types, "valid": valid, "labels": labels,
            "nsp": torch.randint(0, 2, (batch,), generator=g)}


def tvp_logits(model, b):
    out = model(b["ids"], b["types"], b["valid"])
    return out.mlm_logits, out.nsp_logits


def hf_logits(model, b):
    out = model(input_ids=b["ids"], token_type_ids=b["types"], attention_mask=b["valid"])
    return out.prediction_logits, out.seq_relationship_logits


def step_seconds(model, logits_of, b, autocast_dtype) -> tuple[float, float]:
    """One training step's forward and backward (gradients zeroed first): (wall seconds, process CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
        mlm, nsp = logits_of(model, b)
        loss = F.cross_entropy(mlm.float().reshape(-1, mlm.shape[-1]), b["labels"].reshape(-1)) + \
            F.cross_entropy(nsp.float(), b["nsp"])
    loss.backward()
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(BERT_PRESETS), default="base")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    import transformers

    torch.set_num_threads(args.threads)
    p = BERT_PRESETS[args.preset]
    hf_cfg = transformers.BertConfig(hidden_size=p["hidden_size"], num_hidden_layers=p["layers"],
                                     num_attention_heads=p["heads"], intermediate_size=p["intermediate_size"])
    torch.manual_seed(0)
    reference = transformers.BertForPreTraining(hf_cfg)
    cfg = bert_config_from_hf(hf_cfg.to_dict())
    tvp = BertForPreTraining(cfg)
    tvp.load_state_dict(weights_from_hf(reference.state_dict(), cfg), strict=True)
    b = make_batch(args.batch, args.seq, cfg.vocab_size)
    autocast_dtype = torch.bfloat16 if args.dtype == "bf16" else None

    tvp.eval(), reference.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_dtype is not None):
        ours, theirs = tvp_logits(tvp, b), hf_logits(reference, b)
    diffs = [(a.float() - t.float()).abs().max().item() for a, t in zip(ours, theirs)]
    tolerance = 1e-4 if autocast_dtype is None else 0.25
    print(f"same outputs in eval mode: max |MLM diff| {diffs[0]:.2e}, max |NSP diff| {diffs[1]:.2e} "
          f"(tolerance {tolerance:g})")
    assert max(diffs) <= tolerance, f"outputs differ by {max(diffs)}"

    tvp.train(), reference.train()
    sides = {"tvp": (tvp, tvp_logits), "reference": (reference, hf_logits)}
    print(f"BERT-{args.preset} ({sum(p.numel() for p in tvp.parameters()) / 1e6:.1f}M parameters), batch "
          f"{args.batch} x {args.seq} tokens, {args.dtype}, {args.threads} threads, train mode, "
          f"{args.warmup} warm-up + {args.repeats} timed steps per side, interleaved")
    medians = interleaved_medians(lambda side: step_seconds(*sides[side], b, autocast_dtype), args.warmup,
                                  args.repeats)
    tvp_s, ref_s = medians["tvp"]["wall"], medians["reference"]["wall"]
    print(f"RESULT metric=bert_{args.preset}_{args.dtype}_step_s tvp={tvp_s:.3f} reference={ref_s:.3f} "
          f"ratio={tvp_s / ref_s:.3f} better=lower")


if __name__ == "__main__":
    main()
