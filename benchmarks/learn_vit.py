"""Does a tiny ViT learn the embedded digits? Held-out top-1 after a wall-clock budget, against the target
and against a logistic regression on the raw pixels.

The embedded digits (scikit-learn's 1,797 handwritten digits) are written as a
class-per-folder tree and ingested with tvp's image-folder stage at 32 pixels,
20 % of each class held out (``tvp ingest imagefolder --sample --image-size
32``). The ``vit-tiny`` preset (32-pixel images in 4-pixel patches, width 64,
4 layers, 4 heads; crops, RandAugment, mixup, label smoothing, stochastic
depth, warmup + cosine) is trained through the one training loop in this
process (the in-process harness: the loop the Ray Train workers run) for as
many epochs as the budget allows, then evaluated on the held-out digits.

Target (issue 13): held-out top-1 ≥ 0.85 within 5 minutes of training on 2 cores. A logistic regression on the
same 32-pixel images (scikit-learn, fitted on the training set) is printed beside it: about 0.96 on these
digits, so beating chance three times over would prove nothing.

    python benchmarks/learn_vit.py [--minutes 4.2] [--epochs N] [--set train.lr=0.001 ...]

Ends with ``RESULT metric=heldout_top1 tvp=<top-1> reference=0.85 (the target) ... logistic_regression=<top-1>``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "benchmark_support"))  # shared helpers
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

TARGET = 0.85


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.2, help="training time budget (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: as many as the budget allows)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a vit-tiny preset value, e.g. --set train.lr=0.001")
    args = parser.parse_args()

    import torch

    from learning_budget import epochs_in_budget
    from cluster.ray_cluster import connect
    from components.data.ingest.digits_image_folder import write_digits_folder
    from components.data.ingest.image_folder_shard import ImageFolderConfig
    from components.data.ingest.image_processing import ImageConfig
    from components.data.shards.shard_set import ShardSet
    from components.evaluation.batch_evaluation import evaluate, sample_batches
    from components.evaluation.eval_facts import eval_facts
    from components.tasks.task import EvalFacts
    from components.tasks.vit import VitTask
    from components.training.harness import train_in_process
    from pipelines.ingest_imagefolder import ingest_image_folder, open_image_folders
    from pipelines.run_config import load_run_config

    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        connect(None, num_cpus=os.cpu_count() or 1, dashboard=False)
        inputs = open_image_folders(write_digits_folder(str(root / "images")), heldout_fraction=0.2)
        ingest_image_folder(inputs, root, ImageFolderConfig(ImageConfig(image_size=32)), 200, echo=lambda _: None)
        cfg = load_run_config("vit", "vit-tiny", args.overrides)
        task = VitTask(cfg.task_config("vit")).fit_to_data(lambda: EvalFacts.from_manifest(eval_facts(str(root / "train"))))
        train = {**cfg.train.__dict__, "loader_workers": 0, "preemption_check_every_steps": 0,
                 "system_metrics_every_s": 0}
        spec = {"task": "vit", "task_config": task.config_dict(), "files": {},
                "sources": [[str(root / "train"), 1.0]], "train": train}
        epochs = args.epochs or epochs_in_budget(spec, root, args.minutes)
        print(f"training vit-tiny for {epochs} epochs on {len(inputs.train.files)} digits "
              f"({cfg.train.batch_size} per step)")
        started = time.perf_counter()
        run = train_in_process({**spec, "train": {**train, "epochs": epochs}}, root / "run")
        trained_s = time.perf_counter() - started
        heldout = list(ShardSet.open(str(root / "heldout")).iter_samples(["jpg", "cls"]))
        facts = EvalFacts.from_manifest(eval_facts(str(root / "heldout")))
        metrics = evaluate(run.loop.task, run.model.eval(), sample_batches(run.loop.task, heldout, 128), facts)
        baseline = _logistic_regression(list(ShardSet.open(str(root / "train")).iter_samples(["jpg", "cls"])), heldout)

    print(f"trained {trained_s:.0f} s; {metrics['num_eval_samples']:.0f} held-out digits")
    print(f"  ViT top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  (target top-1 ≥ {TARGET})")
    print(f"  logistic regression on the raw pixels: top-1 {baseline:.4f}")
    print(f"RESULT metric=heldout_top1 tvp={metrics['top1']:.4f} reference={TARGET} "
          f"ratio={metrics['top1'] / TARGET:.3f} better=higher top5={metrics['top5']:.4f} "
          f"logistic_regression={baseline:.4f} train_s={trained_s:.0f} epochs={epochs}")


def _pixels(samples: list[dict]) -> tuple:
    import numpy as np
    from PIL import Image

    x = np.stack([np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("L"), dtype=np.float32).ravel() / 255
                  for s in samples])
    return x, np.array([int(s["cls"]) for s in samples])


def _logistic_regression(train: list[dict], heldout: list[dict]) -> float:
    from sklearn.linear_model import LogisticRegression

    x, y = _pixels(train)
    x_test, y_test = _pixels(heldout)
    return float(LogisticRegression(max_iter=2000).fit(x, y).score(x_test, y_test))


if __name__ == "__main__":
    main()
