"""``tvp train clip`` on the demo's shards: train, evaluate, register, promote; named runs refuse a new config."""

import json

from mlflow.tracking import MlflowClient

from tests.conftest import run_tvp


def test_train_registers_promotes_and_guards_named_runs(demo_run, tmp_path):
    summary = demo_run["summary"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    args = ["train", "clip", "--data", summary["shards_dir"], "--eval", summary["heldout_shards_dir"],
            "--name", "nightly", "--workdir", str(tmp_path), "--promote-if", "zero_shot_top1",
            "--set", "train.epochs=1", "--set", "tracking.registered_model=clip-nightly"]
    result = run_tvp(*args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered clip-nightly version 1" in result.stdout and "zero_shot_top1:" in result.stdout

    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("clip-nightly", "champion")
    assert str(champion.version) == "1" and champion.tags["promotion"].startswith("promoted to first champion")
    run = client.get_run(champion.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "1"
    assert run.data.tags["data_manifest_hash"] == summary["data_manifest_hash"]
    assert json.loads((tmp_path / "ray_results" / "nightly" / "checkpoint_manager_snapshot.json").read_text())

    changed = run_tvp(*[a if a != "train.epochs=1" else "train.epochs=2" for a in args], env=env)
    assert changed.returncode == 2
    assert "run 'nightly' was started with train.epochs=1, not 2" in changed.stderr
    assert client.get_run(champion.run_id).info.status == "FINISHED"  # the finished run is left as it was

    missing = run_tvp("train", "clip", "--data", str(tmp_path / "nowhere"), "--workdir", str(tmp_path / "w"), env=env)
    assert missing.returncode == 2 and "is not a finished shard set" in missing.stderr
    assert not (tmp_path / "w").exists()
