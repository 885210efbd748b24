"""The ``tvp`` CLI as a user meets it: help, bad input, and a real ingest run."""

import importlib
import json
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.conftest import REPO, run_tvp


def closed_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvp: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_the_errors_the_cli_reports_in_one_line_are_one_family():
    from components.errors import TvpError

    # Each keeps the built-in base its callers catch; the CLI catches the family.
    for name, base in [
        ("pipelines.config.ConfigError", ValueError),
        ("components.data.ingest.url_table.TableError", ValueError),
        ("components.data.shards.shard_reader.ShardSetError", ValueError),
        ("components.tracking.tracking_store.TrackingUnavailable", RuntimeError),
        ("components.training.checkpoint.CheckpointError", ValueError),
        ("components.tracking.promotion.PromotionError", ValueError),
        ("components.tracking.run_tracker.RunConflict", ValueError),
        ("components.training.stop_request.TrainingStopped", RuntimeError),
    ]:
        module, _, cls = name.rpartition(".")
        error = getattr(importlib.import_module(module), cls)
        assert issubclass(error, TvpError) and issubclass(error, base), name
        assert error.exit_code == (143 if cls == "TrainingStopped" else 2), name


def test_the_cli_starts_without_heavy_imports():
    script = ("import sys, pipelines.cli; heavy = {'torch', 'ray', 'mlflow', 'pyarrow'} & set(sys.modules);"
              " print(sorted(heavy))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_help_lists_commands_and_examples():
    result = run_tvp("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout and "ingest" in result.stdout and "examples:" in result.stdout
    assert "--set" in run_tvp("demo", "--help").stdout


def test_unknown_config_key_fails_before_writing_anything(tmp_path):
    workdir = tmp_path / "w"
    result = run_tvp("demo", "--workdir", str(workdir), "--set", "train.epoch=3", "-v")  # -v after the command too
    assert_one_line_error(result, "unknown config key 'train.epoch'")
    assert not workdir.exists()
    assert "unrecognized arguments: --verbosity" in run_tvp("demo", "--verbosity").stderr


def test_unreachable_tracking_server_fails_within_seconds(tmp_path):
    workdir = tmp_path / "w"
    uri = f"http://127.0.0.1:{closed_loopback_port()}"
    started = time.monotonic()
    result = run_tvp("demo", "--workdir", str(workdir), env={"MLFLOW_TRACKING_URI": uri})
    assert_one_line_error(result, f"MLflow tracking server {uri} is unreachable")
    assert time.monotonic() - started < 30
    assert not workdir.exists()


def test_ingest_refuses_missing_and_malformed_tables(ray_address, tmp_path):  # line 2 is read once Ray is up
    out = tmp_path / "out"
    assert_one_line_error(run_tvp("ingest", "image-text", str(tmp_path / "no.parquet"), "--output", str(out)),
                          "does not exist")
    pq.write_table(pa.table({"URL": ["a.png"], "TEXT": ["x"]}), tmp_path / "laion.parquet")
    assert_one_line_error(run_tvp("ingest", "image-text", str(tmp_path / "laion.parquet"), "--output", str(out)),
                          "no column 'url', 'caption' (it has: URL, TEXT)")
    (tmp_path / "pairs.jsonl").write_text('{"url": "a.png", "caption": "fine"}\n{"url": "b.png", "caption": \n')
    assert_one_line_error(run_tvp("ingest", "image-text", str(tmp_path / "pairs.jsonl"), "--output", str(out)),
                          "pairs.jsonl:2")
    (tmp_path / "pairs.csv").write_text("url,caption\na.png,fine\n")
    assert_one_line_error(run_tvp("ingest", "image-text", str(tmp_path / "pairs.csv"), "--output", str(out),
                                  "--allow-address", "not-an-address"), "'not-an-address' is neither")
    assert not out.exists()


def test_ingest_writes_a_shard_set(ray_address, tmp_path):
    for i in range(3):
        Image.new("RGB", (40, 30), (0, 80 * i, 0)).save(tmp_path / f"{i}.png")
    rows = {"URL": [f"{i}.png" for i in range(3)] + [(tmp_path / "0.png").as_uri()], "TEXT": ["a", "b", "c", "d"]}
    pq.write_table(pa.table(rows), tmp_path / "pairs.parquet")
    out = tmp_path / "shards"
    result = run_tvp("ingest", "image-text", str(tmp_path / "pairs.parquet"), "--output", str(out),
                     "--url-column", "URL", "--caption-column", "TEXT", "--image-size", "24", "--rows-per-shard", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    # The last row names the first picture again (as a file:// URL): the later copy is dropped.
    assert "3 samples from 4 rows in 2 shards" in result.stdout and "duplicate 1" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 3 and manifest["config"]["image"]["image_size"] == 24
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar"]
