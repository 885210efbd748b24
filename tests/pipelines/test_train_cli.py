"""``tvp train clip`` and ``tvp finetune clip`` on the demo's shards, as a user runs them.

Training with the demo's own preset reproduces the demo's zero-shot accuracy exactly (the data order, the
masks and the initial weights follow from the seed, so every run scores the same); a named run refuses a
changed config; continuing pretraining from the demo's registered model scores at least as well as it.
"""

import json
import shutil

from mlflow.tracking import MlflowClient

from components.data.ingest.digits_demo_data import PROMPT_TEMPLATES
from tests.conftest import run_tvp


def test_train_reproduces_the_demo_registers_promotes_and_guards_named_runs(demo_run, tmp_path):
    summary = demo_run["summary"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    args = ["train", "clip", "--data", summary["shards_dir"], "--eval", summary["heldout_shards_dir"],
            "--name", "nightly", "--workdir", str(tmp_path), "--promote-if", "zero_shot_top1", "--config", "tiny",
            "--set", "tracking.registered_model=clip-nightly",
            "--set", f"task.zero_shot_templates={json.dumps(PROMPT_TEMPLATES)}"]  # the demo's evaluation prompts
    result = run_tvp(*args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered clip-nightly version 1" in result.stdout
    assert f"zero_shot_top1: {summary['zero_shot_top1']:.4f}" in result.stdout  # the same as the demo's run

    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("clip-nightly", "champion")
    assert str(champion.version) == "1" and champion.tags["promotion"].startswith("promoted to first champion")
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "24"
    assert run.data.metrics["zero_shot_top1"] == summary["zero_shot_top1"]
    assert run.data.tags["data_manifest_hash"] == summary["data_manifest_hash"]
    assert json.loads((tmp_path / "ray_results" / "nightly" / "checkpoint_manager_snapshot.json").read_text())

    changed = run_tvp(*args, "--set", "train.epochs=2", env=env)
    assert changed.returncode == 2
    assert "run 'nightly' was started with train.epochs=24, not 2" in changed.stderr
    assert client.get_run(champion.run_id).info.status == "FINISHED"  # the finished run is left as it was

    missing = run_tvp("train", "clip", "--data", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w"), env=env)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and missing.stderr.count("\n") == 1
    assert not (tmp_path / "w").exists()


def test_finetune_from_the_registered_demo_model_scores_at_least_as_well(demo_run, tmp_path):
    summary = demo_run["summary"]
    shutil.copyfile(demo_run["workdir"] / "mlflow.db", tmp_path / "mlflow.db")  # the demo's registry, copied
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = f"models:/{summary['registered_model']}@latest"
    result = run_tvp("finetune", "clip", "--from", parent, "--data", summary["shards_dir"],
                     "--eval", summary["heldout_shards_dir"], "--name", "continued", "--workdir", str(tmp_path),
                     env={"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(uri, registry_uri=uri)
    child = max(client.search_model_versions(f"name = '{summary['registered_model']}'"), key=lambda v: int(v.version))
    assert int(child.version) == int(summary["model_version"]) + 1
    run = client.get_run(child.run_id)
    for tags in (run.data.tags, child.tags):
        assert tags["tvp.parent_model"] == summary["registered_model"]
        assert tags["tvp.parent_version"] == str(summary["model_version"])
        assert tags["tvp.parent_run_id"] == summary["run_id"] and tags["started_from"] == parent
    assert run.data.params["train.lr"] == "0.0001"  # the fine-tuning preset's rate
    assert run.data.metrics["zero_shot_top1"] >= summary["zero_shot_top1"], (run.data.metrics, summary)
    # The tokenizer came from the parent, unchanged.
    assert json.loads(run.data.params["task.model.text.vocab_size"]) == 1024
