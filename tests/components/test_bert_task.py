"""BERT through the one training loop, in process (the harness): a short run on the embedded Wikipedia sample
learns and evaluates on held-out articles, a few batches are overfit, and a pretraining checkpoint becomes a
classifier whose encoder carries over."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.data.shards.shard_set import ShardSet
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import finalize_shard_set, write_shard
from components.evaluation.eval_facts import eval_facts
from components.tasks.bert import NSP_POOL_FILE, UNIGRAM_FILE, VOCAB_FILE, BertTask
from components.tasks.registry import load_task_and_model
from components.tasks.task import EvalFacts
from components.training.harness import train_in_process

TINY = {"vocab_size": 2000, "hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 256, "max_position": 64}
TRAIN = {"batch_size": 8, "lr": 2e-3, "warmup_steps": 2, "weight_decay": 0.01, "shuffle_buffer": 64,
         "loader_workers": 0, "log_every": 1, "preemption_check_every_steps": 0, "system_metrics_every_s": 0}


@pytest.fixture(scope="module")
def wiki(wiki_articles):
    return wiki_articles


def prepared_task(source: str, **config) -> BertTask:
    task = BertTask.from_dict({"model": TINY, "max_seq_length": 64, **config})
    return task.with_files(task.prepare_assets(ShardSet.open(source).iter_samples(["txt"])))


def spec(task: BertTask, train_dir: str, eval_dir: str | None = None, **train) -> dict:
    out = {"task": "bert", "task_config": task.config_dict(), "files": task.files,
           "sources": [[train_dir, 1.0]], "train": {**TRAIN, **train}}
    if eval_dir:
        out["eval"] = {"location": eval_dir, "facts": eval_facts(eval_dir)}
    return out


def test_a_short_run_learns_and_evaluates_on_held_out_articles(wiki, tmp_path):
    task = prepared_task(str(wiki.train), examples_per_document=2)
    assert {VOCAB_FILE, UNIGRAM_FILE, NSP_POOL_FILE} <= set(task.files)
    assert task.files[VOCAB_FILE].splitlines()[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    run = train_in_process(spec(task, str(wiki.train), str(wiki.heldout), epochs=2), tmp_path / "run")
    epochs = [r for r in run.reports if r["trigger"] == "epoch"]
    assert len(epochs) == 2
    last = epochs[-1]
    for name in ("mlm_accuracy", "mlm_loss", "nsp_accuracy", "mlm_baseline_accuracy", "mlm_unigram_entropy"):
        assert np.isfinite(last[name]), name
    assert last["num_eval_samples"] == 2 * wiki.num_heldout  # examples_per_document of each held-out article
    # Two short epochs already beat a uniform guess over the vocabulary by far (ln 2000 ≈ 7.6 nats).
    assert last["mlm_loss"] < 7.0, last

    # The checkpoint rebuilds the task (vocabulary included) and the model, as registration and inference do.
    loaded_task, model = load_task_and_model(_latest(tmp_path / "run"))
    assert loaded_task.files[VOCAB_FILE] == task.files[VOCAB_FILE]
    out = loaded_task.predict(model, [{"text": "the capital of the [MASK] is a city."}])
    assert len(out[0]["mask_predictions"]) == 1
    # The evaluation picture: attention maps of a held-out sentence, a cell per layer and head.
    picture = loaded_task.visualize(model, list(ShardSet.open(wiki.heldout).iter_samples(["txt"]))[:2], EvalFacts())
    assert picture.width > 2 * 128 and picture.height > 2 * 128


def _latest(root) -> str:
    """The newest committed checkpoint folder the harness wrote under ``root``."""
    return str(sorted(p for p in root.glob("checkpoint_*") if (p / ".committed").is_file())[-1])


def test_a_few_batches_are_overfit(wiki, tmp_path):
    """Four short articles seen over and over: the loss falls far below its start. (Masks and chunks are fresh
    every epoch, so this is memorising four texts, not sixteen fixed examples: slower than a fixed batch.)"""
    articles = list(ShardSet.open(wiki.train).iter_samples(["txt", "json"]))[:4]
    samples = [{**a, "txt": b"\n".join(a["txt"].splitlines()[:3])} for a in articles]
    folder = tmp_path / "four"
    ShardStore(folder).makedirs()
    write_shard(folder, 0, samples, {"count": 4})
    finalize_shard_set(folder, {"kind": "four short articles"}, {})
    task = prepared_task(str(folder), examples_per_document=4)
    run = train_in_process(spec(task, str(folder), epochs=30, batch_size=4, lr=3e-3, warmup_steps=3,
                                schedule="constant", shuffle_buffer=0), tmp_path / "run")
    losses = [r["train_loss"] for r in run.reports if r["trigger"] == "epoch"]
    assert losses[-1] < 0.7 * losses[0], losses


def test_a_pretraining_checkpoint_becomes_a_classifier_with_its_encoder(wiki):
    pretrain = prepared_task(str(wiki.train))
    torch.manual_seed(0)
    parent = pretrain.build_model()
    classifier_task = BertTask.from_dict({**pretrain.config_dict(), "objective": "classification"}, pretrain.files)
    facts = EvalFacts(classes={0: "a", 1: "b", 2: "c"})
    classifier_task = classifier_task.fit_to_data(lambda: facts)
    assert classifier_task.config.labels == ["a", "b", "c"]
    model = classifier_task.build_model()
    adapted = classifier_task.adapt_weights(parent.state_dict(), model)
    model.load_state_dict(adapted)
    for key, value in parent.state_dict().items():
        if key.startswith("bert."):
            assert torch.equal(model.state_dict()[key], value), key
    assert not any(k.startswith(("mlm.", "nsp.")) for k in model.state_dict())

    batch = classifier_task.transform_batch({
        "txt": np.array([b"A sentence about a city.", b"Another one."], dtype=object),
        "json": np.array([json.dumps({"label": 2, "label_name": "c"}).encode(), b'{"label": 0, "label_name": "a"}'],
                         dtype=object)})
    assert batch["label"].tolist() == [2, 0] and batch["input_ids"][:, 0].tolist() == [2, 2]  # [CLS] first
    with pytest.raises(ValueError, match="not one of this classifier's classes"):
        classifier_task.transform_batch({"txt": np.array([b"x"], dtype=object),
                                         "json": np.array([b'{"label": 7, "label_name": "zzz"}'], dtype=object)})


def test_hugging_face_layout_out_and_back_in(wiki, tmp_path):
    """tvp export writes what transformers loads with the same logits; tvp finetune --from reads it back."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertForPreTraining as HFBert

    from pipelines.export_model import export_model
    from pipelines.finetune import PARENT_FORMAT_TAG, resolve_parent
    from components.training.checkpoint import save_checkpoint_state

    task = prepared_task(str(wiki.train))
    torch.manual_seed(0)
    model = task.build_model().eval()
    checkpoint = save_checkpoint_state(tmp_path / "ckpt", model.state_dict(), "bert", task.config_dict(), task.files)
    folder = export_model(str(checkpoint), tmp_path / "hf", None)
    assert {"model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}

    reference = HFBert.from_pretrained(folder).eval()
    ids = torch.tensor([[2, 40, 41, 42, 3, 50, 51, 3, 0, 0]])
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ours = model(ids, types, mask)
        theirs = reference(input_ids=ids, token_type_ids=types, attention_mask=mask)
    torch.testing.assert_close(ours.mlm_logits, theirs.prediction_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.nsp_logits, theirs.seq_relationship_logits, atol=1e-5, rtol=1e-5)

    parent = resolve_parent(str(folder), "bert", "sqlite:///unused.db", tmp_path / "download")
    assert parent.tags[PARENT_FORMAT_TAG] == "huggingface" and parent.files["vocab.txt"] == task.files["vocab.txt"]
    assert parent.task_config["model"] == task.config_dict()["model"]
    with pytest.raises(Exception, match="not an empty folder"):
        export_model(str(checkpoint), tmp_path / "hf", None)


def test_a_table_without_its_label_column_fails_in_one_line_before_ray(tmp_path):
    from tests.conftest import run_tvp

    (tmp_path / "t.csv").write_text("text,cat\nhello,a\n")
    result = run_tvp("ingest", "text-table", str(tmp_path / "t.csv"), "--output", str(tmp_path / "out"),
                     env={"RAY_ADDRESS": None})
    assert result.returncode == 2 and result.stderr.strip() == (
        f"tvp: error: {tmp_path / 't.csv'} has no column 'label' (it has: text, cat)")
    assert not (tmp_path / "out").exists()
