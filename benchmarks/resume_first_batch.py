"""Time to the first batch of a resumed epoch (90 % done) against a fresh epoch's, and against replaying.

A resumed worker skips whole shuffle windows without opening their shards and
reads only the window it was in; the alternative a shuffle buffer forces
(read and decode everything already trained on, then drop it) is measured
beside it. Images are 64x64 JPEGs through CLIP's transform, one process.

    .venv/bin/python benchmarks/resume_first_batch.py [--shards 40] [--per-shard 256]

RESULT: tvp = seconds to the first batch when resuming at 90 % of an epoch,
reference = seconds to the first batch of a fresh epoch (lower is better).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.data.loading.rank_reader import rank_batches  # noqa: E402
from components.data.loading.shard_plan import read_shard_refs  # noqa: E402
from components.data.loading.tokenizer import train_caption_tokenizer  # noqa: E402
from components.data.shards.shard_store import ShardStore  # noqa: E402
from components.data.shards.shard_writer import finalize_shard_set, write_shard  # noqa: E402
from components.tasks.clip import TOKENIZER_FILE, ClipTask, ClipTaskConfig  # noqa: E402
from components.models.clip import CLIPConfig, TextConfig  # noqa: E402
from components.models.vit import ViTConfig  # noqa: E402

BATCH = 64
WINDOW = 1000  # the default shuffle_buffer


def make_set(folder: Path, shards: int, per_shard: int) -> None:
    rng = np.random.default_rng(0)
    ShardStore(folder).makedirs()
    for shard in range(shards):
        samples = []
        for i in range(per_shard):
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, format="JPEG")
            samples.append({"__key__": f"{shard * per_shard + i:09d}", "jpg": out.getvalue(),
                            "txt": f"a picture of noise number {i % 10}"})
        write_shard(folder, shard, samples, {"count": per_shard})
    finalize_shard_set(folder, {"kind": "benchmark"}, {})


def first_batch_seconds(refs, task, skip_batches: int) -> float:
    started = time.perf_counter()
    batches = rank_batches(refs, task.columns, task.transform_batch, BATCH, WINDOW, seed=0, skip=skip_batches,
                           loader_workers=0)
    next(batches)
    return time.perf_counter() - started


def replay_seconds(refs, task, skip_batches: int) -> float:
    """What resuming behind a shuffle buffer costs: every skipped batch read and decoded, then dropped."""
    started = time.perf_counter()
    batches = rank_batches(refs, task.columns, task.transform_batch, BATCH, WINDOW, seed=0, loader_workers=0)
    for _ in range(skip_batches + 1):
        next(batches)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--per-shard", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tokenizer = train_caption_tokenizer([f"a picture of noise number {i}" for i in range(10)], vocab_size=300)
    model = CLIPConfig(vision=ViTConfig(image_size=64, patch_size=16, width=64, layers=2, heads=2),
                       text=TextConfig(vocab_size=300, context_length=16, width=64, layers=2, heads=2))
    task = ClipTask(ClipTaskConfig(model=model), {TOKENIZER_FILE: tokenizer.to_str()})
    with tempfile.TemporaryDirectory() as tmp:
        make_set(Path(tmp) / "set", args.shards, args.per_shard)
        refs = read_shard_refs(Path(tmp) / "set")
        skip = int(0.9 * args.shards * args.per_shard) // BATCH
        fresh = statistics.median(first_batch_seconds(refs, task, 0) for _ in range(args.rounds))
        resumed = statistics.median(first_batch_seconds(refs, task, skip) for _ in range(args.rounds))
        replayed = replay_seconds(refs, task, skip)
    print(f"{args.shards} shards x {args.per_shard} samples, batch {BATCH}, shuffle window {WINDOW}")
    print(f"first batch: fresh {fresh:.3f} s, resumed at 90 % {resumed:.3f} s, replaying to 90 % {replayed:.3f} s")
    print(f"RESULT metric=first_batch_s_at_90pct_resume tvp={resumed:.3f} reference={fresh:.3f} "
          f"ratio={resumed / fresh:.3f} better=lower")


if __name__ == "__main__":
    main()
