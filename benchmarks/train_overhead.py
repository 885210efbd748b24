"""Training throughput through tvp (TorchTrainer, shards read via Ray Data) against a plain PyTorch loop.

Both train the demo's CLIP at the demo's batch size on the same shards, with
the same model code, optimizer step and thread count (one worker, one
thread). The reference reads the shards with the ``webdataset`` library in
its own process. Steady state: the median samples/s of the epochs after the
first. Run: ``.venv/bin/python benchmarks/train_overhead.py [--epochs N]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.loopback import use_loopback_only  # noqa: E402

use_loopback_only()

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from cluster.ray_cluster import connect  # noqa: E402
from components.data.ingest.digits_demo_data import build_digits_tables  # noqa: E402
from components.data.ingest.image_text_stage import shard_image_text_table  # noqa: E402
from components.data.ingest.image_text_shard import IngestConfig  # noqa: E402
from components.data.loading.shard_plan import ShardSource, read_shard_refs  # noqa: E402
from components.data.loading.tokenizer import train_caption_tokenizer  # noqa: E402
from components.data.ingest.url_table import TableSpec  # noqa: E402
from components.tracking.run_tracker import RunTracker  # noqa: E402
from components.tasks.clip import TOKENIZER_FILE, ClipTask, ClipTaskConfig  # noqa: E402
from components.training.optimizers import build_adamw  # noqa: E402
from components.training.ray_trainer import fit  # noqa: E402
from components.training.schedules import build_scheduler  # noqa: E402
from components.training.train_config import TrainConfig  # noqa: E402
from components.training.train_step import OptimizerStep  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.demo import DemoConfig  # noqa: E402


def prepare(work: Path) -> tuple[ClipTask, DemoConfig, Path]:
    cfg = load_config(DemoConfig, "tiny")
    tables = build_digits_tables(work / "source", cfg.data.source_size, cfg.data.heldout_fraction, cfg.data.seed)
    shards = work / "shards"
    shard_image_text_table(TableSpec(str(tables.train)), shards, IngestConfig(cfg.data.image), cfg.data.rows_per_shard)
    captions = pq.read_table(tables.train, columns=["caption"]).column("caption").to_pylist()
    tokenizer = train_caption_tokenizer(captions, cfg.model.text.vocab_size)
    return ClipTask(ClipTaskConfig(model=cfg.model), {TOKENIZER_FILE: tokenizer.to_str()}), cfg, shards


def tvp_samples_per_s(task: ClipTask, cfg: TrainConfig, shards: Path, work: Path) -> list[float]:
    uri = f"sqlite:///{work / 'bench.db'}"
    tracker = RunTracker.create(uri, "bench", "train_overhead", (work / "artifacts").as_uri())
    fit(task, cfg, [ShardSource(str(shards))], work / "ray", "train_overhead",
        tracking={"tracking_uri": uri, "run_id": tracker.run_id})
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "samples_per_s")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def reference_samples_per_s(task: ClipTask, cfg: TrainConfig, shards: Path) -> list[float]:
    """A plain single-process loop: webdataset reading, the task's batch function, the same optimizer step."""
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    model = task.build_model()
    optimizer = build_adamw(model, cfg.lr, cfg.weight_decay)
    step = OptimizerStep(model, task.loss, optimizer, build_scheduler(optimizer, 10_000, cfg.warmup_steps))
    urls = [ref.url for ref in read_shard_refs(shards)]
    rates = []
    for epoch in range(cfg.epochs):
        dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).shuffle(cfg.shuffle_buffer, rng=random.Random(epoch)).to_tuple("jpg", "txt")
        started, samples, batch = time.perf_counter(), 0, []
        for jpg, txt in dataset:
            batch.append((jpg, txt))
            if len(batch) == cfg.batch_size:
                columns = {"jpg": np.array([b[0] for b in batch], dtype=object),
                           "txt": np.array([b[1] for b in batch], dtype=object)}
                step([{k: torch.from_numpy(v) for k, v in task.transform_batch(columns).items()}])
                samples += len(batch)
                batch = []
        rates.append(samples / (time.perf_counter() - started))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per side; the first is warm-up (default: 6)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        connect()
        task, demo_cfg, shards = prepare(work)
        cfg = TrainConfig(**{**demo_cfg.train.__dict__, "epochs": args.epochs, "num_workers": 1,
                             "cpus_per_worker": 1, "keep_checkpoints": 1})
        print(f"{read_shard_refs(shards).__len__()} shards, batch {cfg.batch_size}, {args.epochs} epochs per side")
        reference = reference_samples_per_s(task, cfg, shards)
        tvp = tvp_samples_per_s(task, cfg, shards, work)
    tvp_rate, reference_rate = statistics.median(tvp[1:]), statistics.median(reference[1:])
    print("tvp samples/s per epoch:      ", " ".join(f"{r:.0f}" for r in tvp))
    print("reference samples/s per epoch:", " ".join(f"{r:.0f}" for r in reference))
    print(f"RESULT metric=train_samples_per_s tvp={tvp_rate:.1f} reference={reference_rate:.1f} "
          f"ratio={tvp_rate / reference_rate:.3f} better=higher")


if __name__ == "__main__":
    main()
