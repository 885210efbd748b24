"""``tvp evaluate`` and ``tvp promote`` against a copy of the demo's registry."""

import shutil

import pytest
from mlflow.tracking import MlflowClient

from components.tracking.promotion import PromotionError, beats
from pipelines.evaluate import evaluate_registered, promote_registered
from tests.conftest import run_tvp


@pytest.fixture
def registry(demo_run, tmp_path):
    """The demo's SQLite store copied, so these tests may add versions and aliases freely."""
    shutil.copyfile(demo_run["workdir"] / "mlflow.db", tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}", demo_run["summary"]


def test_beats_is_strict_in_both_directions():
    assert beats(0.9, 0.8, "max") and not beats(0.8, 0.8, "max") and not beats(0.7, 0.8, "max")
    assert beats(0.1, 0.2, "min") and not beats(0.2, 0.2, "min")


def test_evaluate_records_metrics_and_promotion_needs_a_strictly_better_score(registry):
    uri, summary = registry
    name, heldout = summary["registered_model"], summary["heldout_shards_dir"]
    client = MlflowClient(uri, registry_uri=uri)

    with pytest.raises(PromotionError, match="no evaluation of 'zero_shot_top1'"):
        promote_registered(f"models:/{name}@latest", "zero_shot_top1", "max", "champion", uri)

    metrics = evaluate_registered(f"models:/{name}@latest", heldout, uri)
    assert metrics["zero_shot_top1"] == summary["zero_shot_top1"]  # same model, same data, same score
    version = client.get_model_version(name, summary["model_version"])
    assert float(version.tags["eval.zero_shot_top1"]) == summary["zero_shot_top1"]
    assert version.tags["eval.data_manifest_hash"]

    assert promote_registered(f"models:/{name}@latest", "zero_shot_top1", "max", "champion", uri)[0]
    again = promote_registered(f"models:/{name}@latest", "zero_shot_top1", "max", "champion", uri)
    assert again == (False, f"version {summary['model_version']} already holds champion")
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(summary["model_version"])

    # A second version of the same weights ties on the same data: a tie does not take the alias.
    source = client.get_model_version_download_uri(name, summary["model_version"])  # its files, not models:/m-...
    second = client.create_model_version(name, source, run_id=summary["run_id"]).version
    evaluate_registered(f"models:/{name}/{second}", heldout, uri)
    promoted, reason = promote_registered(f"models:/{name}/{second}", "zero_shot_top1", "max", "champion", uri)
    assert not promoted and "does not beat champion version" in reason
    assert str(client.get_model_version_by_alias(name, "champion").version) == str(summary["model_version"])
    assert client.get_model_version(name, second).tags["promotion"].startswith("not promoted: ")
    # Lower is better for a loss-like reading of the same numbers: still a tie, still no promotion.
    assert not promote_registered(f"models:/{name}/{second}", "zero_shot_top1", "min", "champion", uri)[0]


def test_cli_evaluate_and_promote(registry, tmp_path):
    uri, summary = registry
    name = summary["registered_model"]
    env = {"MLFLOW_TRACKING_URI": uri}
    result = run_tvp("evaluate", f"models:/{name}@latest", "--data", summary["heldout_shards_dir"], env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"zero_shot_top1: {summary['zero_shot_top1']:.4f}" in result.stdout
    result = run_tvp("promote", f"models:/{name}@latest", "--metric", "zero_shot_top1", env=env)
    assert result.returncode == 0 and result.stdout.startswith("promoted: first champion"), result.stderr[-2000:]
    missing = run_tvp("promote", "models:/no-such-model/1", "--metric", "zero_shot_top1", env=env)
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0 and "not found" in missing.stderr
