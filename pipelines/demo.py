"""The main job: embedded digits → image-text table → shards → Ray Train CLIP → MLflow run and registry → zero-shot."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from components.data.ingest.digits_demo_data import CLASS_NAMES, build_digits_tables
from components.data.ingest.image_text_shard import IngestConfig
from components.data.ingest.url_table import TableSpec
from components.data.loading.shard_plan import ShardSource
from components.data.shards.atomic_files import write_json_atomic
from pipelines.demo_config import TASK, DemoConfig
from pipelines.ingest_image_text import ingest_image_text
from pipelines.run_steps import prepare_services
from pipelines.training_run import run_training

def mlflow_ui_command(tracking_uri: str, workdir: Path) -> str:
    """The exact command that browses this store (a server is simply opened in a browser)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"{Path(sys.executable).parent / 'tvp'} ui --workdir {workdir}"


def run_demo(
    cfg: DemoConfig, workdir: str | Path, address: str | None = None, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run the whole demo in ``workdir``; return the summary (also written to ``workdir/summary.json``)."""
    started = time.monotonic()
    work = Path(workdir).resolve()
    tracking_uri = prepare_services(work, address)

    echo("[1/3] building the image-text table from scikit-learn's digits")
    tables = build_digits_tables(work / "source", cfg.data.source_size, cfg.data.heldout_fraction, cfg.data.seed)
    echo(f"  {tables.num_train} training rows, {tables.num_heldout} held-out rows in {work / 'source'}")

    echo("[2/3] sharding in Ray tasks (decode, validate, resize, write WebDataset)")
    shards = {split: work / "shards" / split for split in ("train", "heldout")}
    ingest = IngestConfig(image=cfg.data.image)
    train_manifest = ingest_image_text(TableSpec(str(tables.train)), shards["train"], ingest, cfg.data.rows_per_shard,
                                       echo=echo)
    heldout_manifest = ingest_image_text(TableSpec(str(tables.heldout)), shards["heldout"], ingest,
                                         cfg.data.rows_per_shard, echo=echo)

    echo("[3/3] training, zero-shot evaluation with unseen prompt templates, registration")
    run_name = f"clip-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_training(TASK, cfg, [ShardSource(str(shards["train"]))], str(shards["heldout"]), work, run_name,
                          tracking_uri, echo=echo).as_dict()
    chance = 1.0 / len(CLASS_NAMES)
    summary = {
        "workdir": str(work),
        "shards_dir": str(shards["train"]),
        "heldout_shards_dir": str(shards["heldout"]),
        "num_train_samples": train_manifest["num_samples"],
        "num_heldout_samples": heldout_manifest["num_samples"],
        **{k: v for k, v in result.items() if k not in ("metrics", "promotion", "parent")},
        "zero_shot_top1": result["metrics"]["zero_shot_top1"],
        "chance_top1": chance,
        "duration_s": round(time.monotonic() - started, 1),
        "mlflow_ui": mlflow_ui_command(tracking_uri, work),
    }
    write_json_atomic(work / "summary.json", summary)
    return summary
