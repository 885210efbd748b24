"""Training on a shard set in img2dataset's exact layout, which holds no file of tvp's: indexed on first
read, its tokenizer prepared from its captions, trained by the same loop (in one process here)."""

from __future__ import annotations

import math
from dataclasses import asdict

from components.data.shards.shard_set import ShardSet, work_index_dir
from components.tasks.clip import ClipTask, ClipTaskConfig
from components.training.harness import train_in_process
from tests.components.test_transformer_blocks import tiny_clip_config
from tests.img2dataset_layout import write_img2dataset_set


def test_clip_trains_on_an_img2dataset_output_folder(tmp_path):
    shards = tmp_path / "laion-like"
    keys = write_img2dataset_set(shards, rows_per_shard=(20, 18, 22, 19))
    assert not list(shards.glob("sizes.json")) and not list(shards.glob("manifest.json"))

    index_dir = work_index_dir(tmp_path / "work")
    config = tiny_clip_config()
    config.text.vocab_size = 600  # the CLIP tokenizer needs at least 514 ids
    task = ClipTask(ClipTaskConfig(model=config))
    task = task.with_files(task.prepare_assets(ShardSet.open(shards, index_dir).iter_samples(task.asset_columns)))
    spec = {"task": "clip", "task_config": asdict(task.config), "files": task.files,
            "train": {"epochs": 2, "batch_size": 8, "loader_workers": 0, "shuffle_buffer": 16,
                      "preemption_check_every_steps": 0},
            "sources": [[str(shards), 1.0, index_dir]]}
    run = train_in_process(spec, tmp_path / "checkpoints")

    indexed = ShardSet.open(shards, index_dir)
    assert indexed.manifest["indexed_by"] == "tvp" and indexed.num_samples == len(keys) == 75
    epochs = [r for r in run.reports if r["trigger"] == "epoch"]
    assert [r["step"] for r in epochs] == [9, 18]  # 75 samples, batches of 8: 9 steps an epoch
    assert all(math.isfinite(r["train_loss"]) for r in epochs)
