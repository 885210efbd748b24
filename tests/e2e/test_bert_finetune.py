"""``tvp finetune bert`` as a user runs it (the issue's one TorchTrainer run): a pretraining checkpoint becomes a
sentence classifier trained on a labelled CSV table, which tvp shards into the work directory first; the run
records accuracy and its parent, and the registered version carries the vocabulary."""

from __future__ import annotations

import csv
import itertools
import os

from mlflow.tracking import MlflowClient

from components.data.shards.shard_set import ShardSet
from components.tasks.bert import BertTask
from components.tracking.registry import download_registered_checkpoint
from components.training.checkpoint import save_checkpoint_state
from pipelines.text_tables import shard_tables_in_place
from tests.conftest import REPO, run_tvp

TINY = {"vocab_size": 2000, "hidden_size": 64, "layers": 2, "heads": 2, "intermediate_size": 256, "max_position": 64}


def _first_rows(table, out, per_class: int) -> None:
    """The first ``per_class`` rows of each label: a small table of the same classes."""
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = itertools.chain.from_iterable(
        list(group)[:per_class] for _, group in itertools.groupby(sorted(rows, key=lambda r: r["label"]),
                                                                 key=lambda r: r["label"]))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, ["text", "label"])
        writer.writeheader()
        writer.writerows(kept)


def test_finetune_bert_classifies_sentences_from_a_table(wiki_articles, tmp_path):
    task = BertTask.from_dict({"model": TINY, "max_seq_length": 64})
    task = task.with_files(task.prepare_assets(ShardSet.open(wiki_articles.train).iter_samples(["txt"])))
    parent = save_checkpoint_state(tmp_path / "pretrained", task.build_model().state_dict(), "bert",
                                   task.config_dict(), task.files)
    _first_rows(wiki_articles.categories_train, tmp_path / "train.csv", 40)
    _first_rows(wiki_articles.categories_heldout, tmp_path / "heldout.csv", 10)

    # The held-out table sharded by hand (tvp ingest text-table does the same), given as a path relative to
    # where the command runs: the workers, which run in Ray's folders, must still find it.
    heldout = shard_tables_in_place([str(tmp_path / "heldout.csv")], tmp_path / "by-hand", 2)[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_tvp("finetune", "bert", "--from", str(parent), "--data", str(tmp_path / "train.csv"),
                     "--eval", os.path.relpath(heldout, REPO), "--workdir", str(tmp_path / "work"),
                     "--name", "categories", "--set", "train.epochs=2", "--set", "train.batch_size=16",
                     env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharding the labelled table" in result.stdout
    assert "registered tvp-bert-classifier version 1" in result.stdout
    assert "accuracy:" in result.stdout

    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version("tvp-bert-classifier", "1")
    run = client.get_run(version.run_id)
    assert 0.0 <= run.data.metrics["accuracy"] <= 1.0 and run.data.metrics["num_classes"] == len(wiki_articles.classes)
    assert run.data.tags["tvp.parent_model"] == str(parent.resolve())
    folder = download_registered_checkpoint("models:/tvp-bert-classifier/1", tmp_path / "registered", uri)
    assert (folder / "vocab.txt").read_text() == task.files["vocab.txt"]  # registered with the model

    said: list[str] = []
    shard_tables_in_place([str(tmp_path / "train.csv")], tmp_path / "work", 2, echo=said.append)
    assert not said  # the table's shard set was made once and is found again
