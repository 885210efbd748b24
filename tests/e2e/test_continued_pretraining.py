"""The continued-pretraining pipeline (``clip-continue``), run through ``tvp run`` as a schedule's tick runs it.

A shard set arrives under the data root; the pipeline selects it (its
lineage never trained on it), fine-tunes from the champion, here absent, so
from the named base (the demo's model), evaluates on the fixed held-out set
and promotes. Run again, it finds nothing new and skips training.
"""

import json
import shutil

from mlflow.tracking import MlflowClient

from tests.conftest import run_tvp


def test_continued_pretraining_trains_on_what_arrived_then_finds_nothing_new(demo_run, tmp_path):
    demo = demo_run["workdir"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(demo / "mlflow.db", workdir / "mlflow.db")  # the demo's registry, changed here only
    arrivals = tmp_path / "arrivals"
    shutil.copytree(demo / "shards" / "train", arrivals / "2026-11-28")
    (arrivals / "2026-11-29").mkdir()  # a set still being written: no manifest yet
    model = demo_run["summary"]["registered_model"]
    params = ["--param", f"data_root={arrivals}", "--param", f"heldout={demo / 'shards' / 'heldout'}",
              "--param", f"model={model}", "--param", f"base=models:/{model}@latest", "--param", "epochs=1",
              "--param", "config=clip-finetune", "--param", "lineage=nightly"]
    env = {"MLFLOW_TRACKING_URI": None}

    first = run_tvp("run", "clip-continue", "--workdir", str(workdir), "--name", "tick-1", *params, env=env)
    assert first.returncode == 0, (first.stdout[-4000:], first.stderr[-3000:])
    assert f"new: {arrivals / '2026-11-28'}" in first.stdout
    assert f"skipped: {arrivals / '2026-11-29'} has no manifest" in first.stdout
    assert f"models:/{model}@champion names no registered version yet: starting from models:/{model}@latest" \
        in first.stdout
    assert "promoted: " in first.stdout

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}", registry_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    pipeline = client.search_runs([client.get_experiment_by_name("tvp-pipelines").experiment_id],
                                  "tags.`tvp.run_name` = 'tick-1'")[0]
    train = client.get_run(pipeline.data.tags["tvp.step.train.mlflow_run_id"])
    arrived = json.loads((arrivals / "2026-11-28" / "manifest.json").read_text())["content_hash"]
    assert train.data.tags["tvp.lineage"] == "nightly" and train.data.tags["data_manifest_hash"] == arrived
    assert train.data.tags["started_from"] == f"models:/{model}@latest"
    champion = client.get_model_version_by_alias(model, "champion")
    assert str(champion.run_id) == train.info.run_id  # the first evaluated version becomes champion

    second = run_tvp("run", "clip-continue", "--workdir", str(workdir), "--name", "tick-2", *params, env=env)
    assert second.returncode == 0, (second.stdout[-4000:], second.stderr[-3000:])
    assert "0 new shard sets under" in second.stdout and "1 trained on already by lineage nightly" in second.stdout
    for step in ("train", "evaluate", "promote"):
        assert f"] {step}: skipped (" in second.stdout
    tags = client.search_runs([client.get_experiment_by_name("tvp-pipelines").experiment_id],
                              "tags.`tvp.run_name` = 'tick-2'")[0].data.tags
    assert tags["tvp.step.train.status"] == "SKIPPED" and tags["tvp.step.promote.status"] == "SKIPPED"
