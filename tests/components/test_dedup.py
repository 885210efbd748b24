"""Exact dedup over a whole shard set: the first copy in input order stays, and a rerun changes nothing."""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa

from components.data.shards.dedup import _rewrite_tar, find_duplicates, remove_duplicates
from components.data.ingest.image_text_shard import STATUS_COLUMNS, STATUS_SCHEMA
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import finalize_shard_set, write_shard


def write(out, shard_id, first, pictures):
    """A shard whose samples carry ``pictures`` (one letter each: equal letters are equal images)."""
    samples, rows = [], {c: [] for c in STATUS_COLUMNS}
    for offset, picture in enumerate(pictures):
        key = f"{first + offset:09d}"
        samples.append({"__key__": key, "jpg": picture.encode() * 10, "txt": f"caption {key}"})
        for column, value in zip(STATUS_COLUMNS, [key, f"http://x/{key}", "c", "success", None, None,
                                                  f"sha-{picture}", 1, 1]):
            rows[column].append(value)
    stats = {"input_rows": len(pictures), "successes": len(pictures), "failures": 0, "errors": {}}
    write_shard(out, shard_id, samples, stats, rows=pa.table(rows, schema=STATUS_SCHEMA))


def keys(path):
    with tarfile.open(path) as tar:
        return sorted({m.name.split(".")[0] for m in tar})


def test_later_copies_go_in_every_shard_and_a_rerun_finds_nothing(tmp_path):
    write(tmp_path, 0, 0, "abca")
    write(tmp_path, 1, 4, "dbea")
    assert find_duplicates(tmp_path) == {0: {"000000003": "000000000"},
                                         1: {"000000005": "000000001", "000000007": "000000000"}}
    assert remove_duplicates(tmp_path) == 3
    assert keys(tmp_path / "00000.tar") == ["000000000", "000000001", "000000002"]
    assert keys(tmp_path / "00001.tar") == ["000000004", "000000006"]
    stats = json.loads((tmp_path / "00001_stats.json").read_text())
    assert stats["count"] == 2 and stats["successes"] == 2 and stats["errors"] == {"duplicate": 2}
    manifest = finalize_shard_set(tmp_path, {}, {})
    assert manifest["num_samples"] == 5 and manifest["errors"] == {"duplicate": 3}

    assert remove_duplicates(tmp_path) == 0
    assert finalize_shard_set(tmp_path, {}, {})["content_hash"] == manifest["content_hash"]


def test_a_pass_interrupted_after_the_tar_converges_on_rerun(tmp_path):
    write(tmp_path, 0, 0, "ab")
    write(tmp_path, 1, 2, "ba")
    _rewrite_tar(ShardStore(tmp_path), "00001.tar", {"000000002", "000000003"})  # a crash before rows and stats
    assert remove_duplicates(tmp_path) == 2
    clean = tmp_path / "clean"
    clean.mkdir()
    write(clean, 0, 0, "ab")
    write(clean, 1, 2, "ba")
    remove_duplicates(clean)
    assert finalize_shard_set(tmp_path, {}, {})["content_hash"] == finalize_shard_set(clean, {}, {})["content_hash"]
