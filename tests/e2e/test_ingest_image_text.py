"""``tvp ingest image-text`` against a real HTTP server on loopback serving real images with injected faults.

The scenario runs in a network namespace with only loopback (``unshare -n``), so
nothing can leave the machine even if the address guard were broken. One run is
SIGKILLed after its first shard and started again; it must end with exactly the
samples of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from tests.conftest import REPO, run_tvp


def run_scenario(work: Path) -> dict:
    command = f"ip link set lo up && exec {sys.executable} -m tests.e2e.ingest_in_namespace {work}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(["unshare", "-n", "sh", "-c", command], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((work / "results.json").read_text())


def samples(shards: Path) -> dict[str, dict]:
    """Read back with the plain webdataset library: key → members."""
    tars = sorted(str(p) for p in shards.glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False)}


def test_faults_land_in_their_categories_and_a_killed_run_resumes_to_the_same_set(tmp_path):
    results = run_scenario(tmp_path)
    assert results["resumed_rc"] == 0, results["resumed_output"][-3000:]
    assert results["whole_rc"] == 0, results["whole_output"][-3000:]
    expected = results["expected"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    rows = pq.read_table(sorted(whole.glob("[0-9]*.parquet"))).to_pylist()
    assert [r["key"] for r in rows] == [f"{i:09d}" for i in range(len(expected))]  # every input row, in order
    for row, category in zip(rows, expected):
        assert row["error_category"] == category, row
        assert (row["status"] == "success") == (category is None), row
    manifest = json.loads((whole / "manifest.json").read_text())
    assert manifest["num_samples"] == expected.count(None) and manifest["num_input_rows"] == len(expected)
    assert manifest["errors"] == {c: expected.count(c) for c in set(expected) if c}

    read = samples(whole)
    assert sorted(read) == [r["key"] for r in rows if r["status"] == "success"]
    digests = set()
    for key, sample in read.items():
        meta = json.loads(sample["json"])
        assert meta["key"] == key and meta["row_label"] == f"row {int(key)}" and meta["url"].startswith("http://")
        assert Image.open(io.BytesIO(sample["jpg"])).size == (32, 32)
        assert sample["txt"].decode() == meta["caption"]
        digests.add(meta["sha256"])
    assert len(digests) == len(read)  # no image twice

    # The killed run completed only what was missing and ends with the same samples, byte for byte.
    assert 1 <= results["complete_at_kill"] < manifest["num_shards"]
    assert results["bad_tars"] == []  # no partial tar was ever visible under its final name
    again = samples(killed)
    assert sorted(again) == sorted(read)
    assert all(hashlib.sha256(again[k]["jpg"]).digest() == hashlib.sha256(read[k]["jpg"]).digest() for k in read)
    assert json.loads((killed / "manifest.json").read_text())["content_hash"] == manifest["content_hash"]
    assert not (whole / "_inputs").exists()
    assert results["user_agent"].startswith("tvp/")

    report = run_tvp("inspect", str(whole))
    assert report.returncode == 0, report.stderr
    assert f"{manifest['num_samples']} samples from {len(expected)} input rows" in report.stdout
    assert "http_404" in report.stdout and "blocked_address" in report.stdout
    sheet = Image.open(whole / "contact_sheet.jpg")
    assert sheet.width > 0 and sheet.height > 0
