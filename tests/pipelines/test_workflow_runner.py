"""``tvp run`` for real: steps in child processes, one MLflow run recording them, resume by run name.

The steps here are cheap (``tvp demo-data``); the pipeline stopped during
training and resumed runs as a Ray job in tests/cluster/test_jobs.py.
"""

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import run_tvp

PIPELINE = """
name: two-tables
params:
  second: null
steps:
  - name: first
    run: tvp demo-data --output ${run.workdir}/first --source-size 8 --seed 1
  - name: second
    run: tvp demo-data --output ${params.second} --source-size 8 --heldout-fraction 0.5
"""


def pipeline_runs(workdir: Path) -> list:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tvp-pipelines")
    return client.search_runs([experiment.experiment_id])


def test_a_failed_step_is_recorded_and_the_rerun_resumes_from_it(tmp_path):
    pipeline = tmp_path / "two.yaml"
    pipeline.write_text(PIPELINE)
    workdir = tmp_path / "work"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the second step wants a folder")
    second = blocker / "tables"
    args = ["run", str(pipeline), "--workdir", str(workdir), "--name", "r1", "--param", f"second={second}"]

    failed = run_tvp(*args, env={"MLFLOW_TRACKING_URI": None})
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "[1/2] first: finished in" in failed.stdout
    assert "tvp: error: step second failed (exit 1); run the same command with --name r1 to resume from it" \
        in failed.stderr
    [run] = pipeline_runs(workdir)
    tags = run.data.tags
    assert run.info.status == "FAILED" and run.info.run_name == "r1"
    assert tags["tvp.step.first.status"] == "FINISHED" and tags["tvp.step.second.status"] == "FAILED"
    assert tags["tvp.step.second.exit_code"] == "1"
    outputs = json.loads(tags["tvp.step.first.outputs"])
    assert outputs["train_table"] == str(workdir / "first" / "train.parquet") and outputs["num_train"] > 0
    assert tags["tvp.step.first.command"] == f"tvp demo-data --output {workdir}/first --source-size 8 --seed 1"
    assert run.data.params == {"param.second": str(second)}
    assert "step_duration_s.first" in run.data.metrics
    first_written = (workdir / "first" / "train.parquet").stat().st_mtime_ns

    blocker.unlink()  # what the failure said was wrong, put right
    changed = run_tvp(*args[:-1], "second=elsewhere", env={"MLFLOW_TRACKING_URI": None})
    assert changed.returncode == 2 and pipeline_runs(workdir)[0].info.status == "FAILED"
    assert f"run 'r1' was started with param.second={second}, not elsewhere: give a new run name" in changed.stderr

    resumed = run_tvp(*args, env={"MLFLOW_TRACKING_URI": None})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming pipeline two-tables, run r1" in resumed.stdout
    assert "[1/2] first: finished in an earlier attempt, not run again" in resumed.stdout
    assert "pipeline two-tables run r1 finished: 1 steps run, 1 done in an earlier attempt, 0 skipped by if:" in resumed.stdout
    assert (workdir / "first" / "train.parquet").stat().st_mtime_ns == first_written  # not made again
    assert (second / "heldout.parquet").is_file()
    [run] = pipeline_runs(workdir)  # the same run, continued
    tags = run.data.tags
    assert run.info.status == "FINISHED" and tags["tvp.resumed"] == "1"  # the refused attempt left it alone
    assert tags["tvp.step.second.status"] == "FINISHED" and tags["tvp.step.second.attempts"] == "2"
    assert tags["tvp.step.first.attempts"] == "1"
