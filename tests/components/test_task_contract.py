"""Every registered task (and the toy task) keeps the task contract: build, assets, transform, loss,
backward, checkpoint save and load, evaluation, pyfunc predict; and no task module loads before it is named."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import asdict
from itertools import islice

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from components.data.loading.rank_reader import sample_rng
from components.data.shards.shard_set import ShardSet
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import finalize_shard_set, write_shard
from components.evaluation.batch_evaluation import evaluate, sample_batches
from components.tasks.registry import load_task_and_model, register_task, task_class, task_names
from components.tasks.task import EvalFacts
from components.tracking.model_package import save_model_package
from components.training.checkpoint import save_checkpoint_state
from tests.components.test_transformer_blocks import tiny_clip_config
from tests.conftest import REPO
from tests.tasks.toy_task import toy_samples

register_task("toy", "tests.tasks.toy_task:ToyTask")
CLASSES = ["zero", "one", "two"]


def _jpeg(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (20, 20), (value, 255 - value, 40)).save(out, format="JPEG")
    return out.getvalue()


def clip_samples(n: int) -> list[dict]:
    return [{"__key__": f"{i:09d}", "jpg": _jpeg(20 * i % 255), "txt": f"a picture of {CLASSES[i % 3]}",
             "json": {"label": i % 3, "label_name": CLASSES[i % 3]}} for i in range(n)]


def document_samples(n: int) -> list[dict]:
    """Articles as tvp ingest wikipedia writes them: one sentence per line."""
    topics = ["cats sleep in the sun", "rivers run to the sea", "stars shine at night"]
    return [{"__key__": f"{i:09d}",
             "txt": "\n".join(f"Sentence {j} says that {topics[(i + j) % 3]} in part {i}." for j in range(4 + i % 3)),
             "json": {"id": i, "title": f"Article {i}"}} for i in range(n)]


def labelled_images(n: int) -> list[dict]:
    """Pictures as tvp ingest imagefolder writes them: .jpg, .cls (the class index), .json."""
    return [{"__key__": f"{i:09d}", "jpg": _jpeg(20 * i % 255), "cls": str(i % 3),
             "json": {"path": f"{CLASSES[i % 3]}/{i}.png", "label": i % 3}} for i in range(n)]


def boxed_pictures(n: int) -> list[dict]:
    """Pictures as tvp ingest coco writes them: .jpg and .json with COCO xywh boxes in pixels."""
    return [{"__key__": f"{i:09d}", "jpg": _jpeg(20 * i % 255),
             "json": {"image_id": i + 1, "width": 20, "height": 20, "boxes": [[2, 3, 8, 6], [10, 10, 5, 7]][: 1 + i % 2],
                      "category_ids": [1 + i % 3, 2][: 1 + i % 2], "iscrowd": [0, 0][: 1 + i % 2],
                      "areas": [48.0, 35.0][: 1 + i % 2]}} for i in range(n)]


TINY_DETR = {"backbone": "tiny", "tiny_width": 8, "trainable_backbone_layers": 4, "d_model": 32, "heads": 2,
             "encoder_layers": 1, "decoder_layers": 2, "ffn_dim": 64, "num_queries": 5, "dropout": 0.0,
             "attn_dropout": 0.0}
SMALL_DETECTION_AUGMENT = {"scales": [32], "max_size": 48, "crop_resize_scales": [32], "min_crop": 16,
                           "max_crop": 24, "pad_to": 48}

TINY_VIT = {"image_size": 16, "patch_size": 4, "width": 32, "layers": 2, "heads": 2}

TINY_BERT = {"vocab_size": 200, "hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64,
             "max_position": 32}

# Per task: a small config and samples in its shard layout. A task without an entry fails the contract.
CONTRACT = {
    "clip": ({"model": {**asdict(tiny_clip_config()), "text": {**asdict(tiny_clip_config().text), "vocab_size": 600}}},
             clip_samples),
    "bert": ({"model": TINY_BERT, "max_seq_length": 32}, document_samples),
    "vit": ({"model": TINY_VIT, "labels": CLASSES}, labelled_images),
    "detr": ({"model": TINY_DETR, "classes": {1: "zero", 2: "one", 3: "two"}, "augment": SMALL_DETECTION_AUGMENT,
              "max_objects": 4}, boxed_pictures),
    "toy": ({"hidden": 4}, toy_samples),
}


@pytest.fixture(scope="module", params=sorted({*task_names(), "toy"}))
def task_and_data(request, tmp_path_factory):
    name = request.param
    assert name in CONTRACT, f"task {name!r} has no entry in the task contract test"
    config, make_samples = CONTRACT[name]
    folder = tmp_path_factory.mktemp(name) / "shards"
    ShardStore(folder).makedirs()
    samples = make_samples(12)
    write_shard(folder, 0, samples[:6], {"count": 6})
    write_shard(folder, 1, samples[6:], {"count": 6})
    finalize_shard_set(folder, {"kind": name}, {})
    shard_set = ShardSet.open(folder)
    cls = task_class(name)
    task = cls.from_dict(config)
    task = task.with_files(task.prepare_assets(shard_set.iter_samples(cls.asset_columns)))
    return task, shard_set


def test_transform_loss_and_backward(task_and_data):
    task, shard_set = task_and_data
    raw = list(islice(shard_set.iter_samples(task.columns), 4))
    columns = {c: np.array([s[c] for s in raw], dtype=object) for c in task.columns}
    rngs = [sample_rng(0, 1, i) for i in range(4)]
    batch = {k: torch.from_numpy(v) for k, v in task.transform_batch(columns, rngs).items()}
    assert all(v.shape[0] == 4 for v in batch.values())
    model = task.build_model()
    loss, metrics = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and "loss" in metrics
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert task.fsdp_units(model), "FSDP needs units to shard"


def test_checkpoint_evaluation_and_pyfunc(task_and_data, tmp_path):
    task, shard_set = task_and_data
    torch.manual_seed(0)
    model = task.build_model().eval()
    save_checkpoint_state(tmp_path / "ckpt", model.state_dict(), task.name, task.config_dict(), task.files)
    loaded_task, loaded = load_task_and_model(tmp_path / "ckpt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])

    facts = EvalFacts(classes=dict(enumerate(CLASSES)), num_samples=12)
    samples = list(shard_set.iter_samples(task.eval_columns))
    whole = evaluate(loaded_task, loaded, sample_batches(loaded_task, samples, 12), facts)
    split = evaluate(loaded_task, loaded, sample_batches(loaded_task, samples, 5), facts)
    assert whole == pytest.approx(split) and whole  # the reduction does not depend on batching

    # Adapting the model's own weights is the identity.
    adapted = task.adapt_weights(model.state_dict(), task.build_model())
    assert all(torch.equal(adapted[k], v) for k, v in model.state_dict().items())

    package = save_model_package(tmp_path / "ckpt", tmp_path / "model", task.inference_inputs, task.inference_example)
    out = mlflow.pyfunc.load_model(str(package)).predict(pd.DataFrame(task.inference_example))
    assert len(out) == len(next(iter(task.inference_example.values())))


def test_no_task_module_is_imported_before_it_is_named():
    code = (
        "import sys\n"
        "import pipelines.cli, components.tasks.registry as r, components.training.train_config\n"
        "loaded = [m for m in sys.modules if m.startswith('components.tasks.') and m not in "
        "('components.tasks.registry',)]\n"
        "assert not loaded, loaded\n"
        "r.task_class('clip')\n"
        "assert 'components.tasks.clip' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
