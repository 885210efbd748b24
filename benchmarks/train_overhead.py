"""Training throughput through tvp (Ray Train, tvp's loop and loader) against the loop a user writes without tvp.

Both sides train the demo's CLIP on the same shards at the demo's batch size,
with one torch thread in the training process and one decoding process beside
it, on the same 2 cores:

- tvp: ``fit`` (components/training/ray_trainer.py), the public training entry
  point, with one Ray Train worker of 1 CPU (so ``OMP_NUM_THREADS=1``) and its
  default loader (one decoding process); checkpoints at every epoch's end and
  rank 0's MLflow logging included, as in any tvp run.
- reference: a fresh Python process, no Ray: ``torch.set_num_threads(1)``, a
  PyTorch ``DataLoader`` over a ``webdataset`` pipeline (shuffle buffer, batch,
  the task's batch transform) with ``num_workers=1`` and persistent workers,
  the same model, the same AdamW parameter groups and schedule, and a plain
  ``zero_grad / backward / step`` loop.

The shard set is the demo's training table written ``--repeat`` times over
(about 11,500 samples, 89 steps an epoch by default): with the demo's own
1,437 samples an epoch lasts under a second, and tvp's per-epoch checkpoint
report then waits for Ray Train's controller, which takes one report per
poll (2 s), which says more about the epoch's length than about training
(``--repeat 1`` shows it). A side's figure is the samples of every epoch
after the first (warm-up) over the time from the first epoch's end to the
last one's, so per-epoch costs such as tvp's checkpoint count; per-epoch
rates are printed too, with each side's CPU time per 1000 samples where the
machine lets a cgroup measure it. Ray is shut down while the reference runs.
Rounds alternate reference and tvp, and the RESULT takes the median over
rounds, to ride out a machine shared with other work.
Run: ``.venv/bin/python benchmarks/train_overhead.py [--epochs N] [--rounds R] [--repeat K]``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASK = "clip"


# --- the reference: what a user writes without tvp (runs in its own process) --------------------------------


def _columns(samples: list[tuple[bytes, bytes]]) -> dict:
    import numpy as np

    return {"jpg": np.array([s[0] for s in samples], dtype=object), "txt": np.array([s[1] for s in samples], dtype=object)}


class _Transform:
    """The task's batch transform (decode, resize, tokenize), run in the loader process."""

    def __init__(self, task):
        self.task = task

    def __call__(self, columns: dict) -> dict:
        import torch

        return {k: torch.from_numpy(v) for k, v in self.task.transform_batch(columns).items()}


def reference_run(spec: dict) -> tuple[list[float], list[int]]:
    """Epoch-end times (``time.time()``) and samples per epoch of the plain loop."""
    import torch
    import webdataset as wds
    from torch.utils.data import DataLoader

    from components.tasks.registry import build_task
    from components.training.optimizers import build_adamw
    from components.training.schedules import build_scheduler

    train = spec["train"]
    torch.set_num_threads(1)  # as a Ray Train worker with 1 CPU (Ray sets OMP_NUM_THREADS=1)
    task = build_task(spec["task"], spec["task_config"], spec["files"])
    torch.manual_seed(train["seed"])
    model = task.build_model()
    model.train()
    optimizer = build_adamw(model, train["lr"], train["weight_decay"])
    steps_per_epoch = spec["samples_per_epoch"] // train["batch_size"]
    scheduler = build_scheduler(optimizer, steps_per_epoch * spec["epochs"], train["warmup_steps"])
    dataset = (
        wds.WebDataset(spec["urls"], shardshuffle=len(spec["urls"]), seed=train["seed"], empty_check=False)
        .shuffle(train["shuffle_buffer"])
        .to_tuple("jpg", "txt")
        .batched(train["batch_size"], collation_fn=_columns, partial=False)
        .map(_Transform(task))
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=1, persistent_workers=True)
    ends, samples = [], []
    for _ in range(spec["epochs"]):
        count = 0
        for batch in loader:
            loss, _ = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            count += len(batch["tokens"])
        ends.append(time.time())
        samples.append(count)
    return ends, samples


def reference_epochs(spec: dict, work: Path) -> tuple[list[float], list[int]]:
    """Run the reference in a fresh Python process (no Ray, no tvp process around it): its epoch ends, samples."""
    (work / "reference_spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, __file__, "--reference", str(work / "reference_spec.json")], check=True,
                   cwd=REPO)
    ends, samples = json.loads((work / "reference_result.json").read_text())
    return ends, samples


def per_epoch(ends: list[float], samples: list[int], start: float) -> list[float]:
    """Samples of each epoch over the time since the previous epoch ended (the first: since ``start``)."""
    return [n / (b - a) for n, a, b in zip(samples, [start, *ends], ends)]


def steady(ends: list[float], samples: list[int]) -> float:
    """Samples of the epochs after the first over the time they took."""
    return sum(samples[1:]) / (ends[-1] - ends[0])


# --- tvp ----------------------------------------------------------------------------------------------------


def prepare(work: Path, repeat: int):
    """The demo's training table, ``repeat`` times over (so that an epoch lasts long enough to measure), sharded
    with tvp's ingestion on the local Ray; and the CLIP task with its tokenizer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.data.ingest.digits_demo_data import build_digits_tables
    from components.data.ingest.image_text_stage import shard_image_text_table
    from components.data.ingest.image_text_shard import IngestConfig
    from components.data.ingest.url_table import TableSpec
    from components.data.shards.shard_set import ShardSet
    from components.tasks.registry import task_class
    from pipelines.config import load_config
    from pipelines.demo_config import DemoConfig

    cfg = load_config(DemoConfig, "tiny")
    tables = build_digits_tables(work / "source", cfg.data.source_size, cfg.data.heldout_fraction, cfg.data.seed)
    table = tables.train.with_name(f"train_x{repeat}.parquet")  # beside the images its rows name
    pq.write_table(pa.concat_tables([pq.read_table(tables.train)] * repeat), table)
    shards = work / "shards"
    shard_image_text_table(TableSpec(str(table)), shards, IngestConfig(image=cfg.data.image), cfg.data.rows_per_shard,
                           dedup=False)  # the copies are the point
    cls = task_class(TASK)
    task = cls(cfg.task_config(TASK))
    task = task.with_files(task.prepare_assets(ShardSet.open(shards).iter_samples(cls.asset_columns)))
    return task, cfg, shards


def tvp_epochs(task, train_cfg, shards: Path, work: Path, round_: int) -> tuple[list[float], list[int], list[float]]:
    """tvp's epoch ends (rank 0's MLflow timestamps of each epoch's metrics, ``time.time()``), samples per
    epoch, and the loop's own per-epoch samples/s (which leaves out the checkpoint)."""
    from mlflow.tracking import MlflowClient

    from components.data.loading.shard_plan import EpochPlanner, ShardSource
    from components.tracking.run_tracker import RunTracker
    from components.training.ray_trainer import fit

    uri = f"sqlite:///{work / 'bench.db'}"
    name = f"train_overhead_{round_}"
    tracker = RunTracker.create(uri, "bench", name, (work / "artifacts").as_uri())
    sources = [ShardSource(str(shards))]
    fit(task, train_cfg, sources, work / "ray", name, tracking={"tracking_uri": uri, "run_id": tracker.run_id})
    history = sorted(MlflowClient(uri).get_metric_history(tracker.run_id, "samples_per_s"), key=lambda m: m.step)
    planner = EpochPlanner(sources, train_cfg.seed, train_cfg.samples_per_epoch)
    batch = train_cfg.batch_size
    samples = [planner.steps(e, 1, batch) * batch for e in range(1, train_cfg.epochs + 1)]
    return [m.timestamp / 1000 for m in history], samples, [m.value for m in history]


class CpuMeter:
    """CPU seconds used by this process and every process it starts (Ray's, the loaders', the reference's),
    sampled 20 times a second, so that a side's CPU time per sample can be read between two epoch ends.

    Uses a cgroup (v1 ``cpuacct``) of its own where this machine lets it be made; else it measures nothing.
    CPU time per sample hardly depends on other work sharing the machine, unlike samples/s.
    """

    ROOT = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.group = self.ROOT / f"tvp-bench-{os.getpid()}"
        try:
            self.group.mkdir()
            (self.group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError:
            self.group = None
            return
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.samples.append((time.time(), int((self.group / "cpuacct.usage").read_text()) / 1e9))

    def between(self, start: float, end: float) -> float | None:
        """CPU seconds used from ``start`` to ``end`` (``time.time()``), interpolated between samples."""
        if not self.samples or not self.samples[0][0] <= start <= end <= self.samples[-1][0]:
            return None
        return self._at(end) - self._at(start)

    def _at(self, t: float) -> float:
        i = bisect.bisect_left(self.samples, (t, -1.0))
        (t0, u0), (t1, u1) = self.samples[max(i - 1, 0)], self.samples[i]
        return u0 + (u1 - u0) * (t - t0) / (t1 - t0) if t1 > t0 else u1

    def close(self) -> None:
        if self.group is None:
            return
        self._done.set()
        self._thread.join()
        (self.ROOT / "cgroup.procs").write_text(str(os.getpid()))
        for _ in range(300):  # Ray's processes may take a while to go on a busy machine
            try:
                self.group.rmdir()
                return
            except OSError:
                time.sleep(0.2)
        print(f"note: {self.group} still holds processes; remove it with rmdir once they are gone", file=sys.stderr)


def cpu_per_1000(meter: CpuMeter, ends: list[float], samples: list[int]) -> str:
    used = meter.between(ends[0], ends[-1])
    return "n/a" if used is None else f"{1000 * used / sum(samples[1:]):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per side; the first is warm-up (default: 6)")
    parser.add_argument("--rounds", type=int, default=2, help="reference/tvp pairs, alternated (default: 2)")
    parser.add_argument("--repeat", type=int, default=8,
                        help="copies of the demo's 1,437 training pairs in the shard set (default: 8, about 11,500)")
    parser.add_argument("--reference", metavar="SPEC", help=argparse.SUPPRESS)  # internal: the reference process
    args = parser.parse_args()
    if args.reference:
        spec_path = Path(args.reference)
        result = reference_run(json.loads(spec_path.read_text()))
        (spec_path.parent / "reference_result.json").write_text(json.dumps(result))
        return

    from cluster.loopback import use_loopback_only

    use_loopback_only()
    meter = CpuMeter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tvp, reference = compare(Path(tmp), args.epochs, args.rounds, args.repeat, meter)
    finally:
        meter.close()
    tvp_rate, reference_rate = statistics.median(tvp), statistics.median(reference)
    print(f"RESULT metric=train_samples_per_s tvp={tvp_rate:.1f} reference={reference_rate:.1f} "
          f"ratio={tvp_rate / reference_rate:.3f} better=higher")


def compare(work: Path, epochs: int, rounds: int, repeat: int, meter: CpuMeter) -> tuple[list[float], list[float]]:
    """Alternate reference and tvp ``rounds`` times; print each; return their steady samples/s per round."""
    import ray

    from cluster.ray_cluster import connect
    from components.data.loading.shard_plan import EpochPlanner, ShardSource, read_shard_refs

    connect()
    task, demo_cfg, shards = prepare(work, repeat)
    ray.shutdown()
    train_cfg = replace(demo_cfg.train, epochs=epochs, num_workers=1, cpus_per_worker=1, keep_checkpoints=1)
    refs = read_shard_refs(shards)
    steps_per_epoch = EpochPlanner([ShardSource(str(shards))], train_cfg.seed).steps(1, 1, train_cfg.batch_size)
    spec = {"task": task.name, "task_config": task.config_dict(), "files": task.files, "train": asdict(train_cfg),
            "urls": [r.url for r in refs], "epochs": epochs, "samples_per_epoch": steps_per_epoch * train_cfg.batch_size}
    print(f"{len(refs)} shards, {steps_per_epoch} steps of {train_cfg.batch_size} per epoch, {epochs} epochs per "
          f"side, {rounds} round(s); CPU: seconds per 1000 samples, all processes of the side", flush=True)
    tvp, reference = [], []
    for round_ in range(1, rounds + 1):
        started = time.time()
        ends, samples = reference_epochs(spec, work)
        reference.append(steady(ends, samples))
        print(f"round {round_} reference: {reference[-1]:.1f} samples/s, CPU {cpu_per_1000(meter, ends, samples)}; "
              "per epoch:", " ".join(f"{r:.0f}" for r in per_epoch(ends, samples, started)), flush=True)
        connect()
        started = time.time()
        ends, samples, own = tvp_epochs(task, train_cfg, shards, work, round_)
        ray.shutdown()
        tvp.append(steady(ends, samples))
        print(f"round {round_} tvp:       {tvp[-1]:.1f} samples/s, CPU {cpu_per_1000(meter, ends, samples)}; "
              "per epoch:", " ".join(f"{r:.0f}" for r in per_epoch(ends, samples, started)),
              "(the first with start-up); the loop's own, checkpoints left out:",
              " ".join(f"{r:.0f}" for r in own), flush=True)
    return tvp, reference


if __name__ == "__main__":
    main()
