"""ShardSet: tvp's sets in folders and S3 alike, foreign (img2dataset) sets indexed on first read."""

import hashlib
import json
import logging
import os
import tarfile

import pytest

from components.data.loading.shard_plan import ShardRef as PlanShardRef
from components.data.loading.shard_plan import ShardSource, EpochPlanner, read_shard_refs
from components.data.shards import shard_set as shard_set_module
from components.data.shards.shard_reader import ShardSetError, iter_samples, read_manifest, shard_paths
from components.data.shards.shard_set import ShardRef, ShardSet
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import finalize_shard_set, write_shard
from tests.conftest import create_bucket
from tests.img2dataset_layout import write_img2dataset_set, write_img2dataset_shard


def samples(n: int, start: int = 0):
    for i in range(start, start + n):
        yield {"__key__": f"{i:09d}", "jpg": bytes([i % 256]) * 10, "txt": f"caption {i}", "json": {"i": i}}


def write_tvp_set(location) -> dict:
    write_shard(location, 0, samples(3), {"input_rows": 3})
    write_shard(location, 1, samples(2, start=3), {"input_rows": 2})
    return finalize_shard_set(location, {"table": "t"}, {})


@pytest.fixture
def s3(s3_env, monkeypatch):
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    return s3_env


def test_shard_ref_moved_here_and_still_importable_from_the_plan():
    assert PlanShardRef is ShardRef


def test_a_tvp_set_in_s3_reads_back_equal_to_the_same_set_in_a_folder(tmp_path, s3):
    create_bucket(s3, "tvp-sets")
    local = write_tvp_set(tmp_path)
    remote = write_tvp_set("s3://tvp-sets/clip/train")
    assert remote["content_hash"] == local["content_hash"]

    here, there = ShardSet.open(tmp_path), ShardSet.open("s3://tvp-sets/clip/train/")
    assert here.location == str(tmp_path) and there.location == "s3://tvp-sets/clip/train"
    assert [r.url for r in there.refs] == ["s3://tvp-sets/clip/train/00000.tar", "s3://tvp-sets/clip/train/00001.tar"]
    assert [r.num_samples for r in there.refs] == [r.num_samples for r in here.refs] == [3, 2]
    assert there.content_hash == here.content_hash and there.manifest == here.manifest
    assert list(there.iter_samples()) == list(here.iter_samples())
    assert [s["txt"] for s in there.iter_samples(["txt"])] == [f"caption {i}".encode() for i in range(5)]
    assert set(next(there.iter_samples(["txt"]))) == {"__key__", "txt"}

    # the old readers go through it
    assert read_manifest("s3://tvp-sets/clip/train") == here.manifest
    assert shard_paths("s3://tvp-sets/clip/train") == [r.url for r in there.refs]
    assert list(iter_samples("s3://tvp-sets/clip/train")) == list(iter_samples(tmp_path))
    assert read_shard_refs("s3://tvp-sets/clip/train") == there.refs
    assert read_shard_refs(tmp_path) == here.refs
    planner = EpochPlanner([ShardSource("s3://tvp-sets/clip/train")], seed=0)
    assert sorted(planner.shards(0), key=lambda r: r.url) == there.refs


def test_an_img2dataset_set_is_indexed_on_first_read_and_found_next_time(tmp_path, monkeypatch):
    keys = write_img2dataset_set(tmp_path, (6, 5, 7))
    assert not (tmp_path / "manifest.json").exists()

    shards = ShardSet.open(tmp_path)
    assert [r.num_samples for r in shards.refs] == [5, 4, 6]
    assert [r.url for r in shards.refs] == [str(tmp_path / f"{i:05d}.tar") for i in range(3)]
    read = list(shards.iter_samples())
    assert [s["__key__"] for s in read] == keys  # shard order, then tar order
    assert set(read[0]) == {"__key__", "jpg", "txt", "json"}
    assert json.loads(read[0]["json"])["key"] == read[0]["__key__"]
    assert [s["txt"] for s in shards.iter_samples(["txt"])] == [s["txt"] for s in read]

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == shards.manifest and shards.index_location == str(tmp_path)
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 5, "00001.tar": 4, "00002.tar": 6}
    assert manifest["indexed_by"] == "tvp" and manifest["source_layout"] == "img2dataset"
    assert (manifest["num_shards"], manifest["num_samples"], manifest["num_input_rows"]) == (3, 15, 18)
    assert manifest["errors"] == {"failed_to_download": 3}
    assert manifest["counted_from"] == {"previous_index": 0, "stats": 3, "streaming": 0}
    rule = hashlib.sha256()
    for i, count in enumerate([5, 4, 6]):
        rule.update(f"{i:05d}.tar:{(tmp_path / f'{i:05d}.tar').stat().st_size}:{count}\n".encode())
    assert shards.content_hash == rule.hexdigest()

    def no_counting(*args):
        raise AssertionError("an indexed set was counted again")

    monkeypatch.setattr(shard_set_module, "_count_samples", no_counting)
    again = ShardSet.open(tmp_path)
    assert again.refs == shards.refs and again.content_hash == shards.content_hash
    assert read_manifest(tmp_path)["content_hash"] == shards.content_hash


def test_stats_of_another_shape_are_not_trusted_the_tars_are_counted(tmp_path):
    write_img2dataset_set(tmp_path, (4, 3))
    for name in ("00000_stats.json", "00001_stats.json"):  # stats that say nothing about samples
        (tmp_path / name).write_text(json.dumps({"count": 99}))
    shards = ShardSet.open(tmp_path)
    assert [r.num_samples for r in shards.refs] == [3, 2]
    assert shards.manifest["counted_from"]["streaming"] == 2 and shards.manifest["source_layout"] == "webdataset"


def test_bare_tars_without_stats_are_all_complete_and_counted(tmp_path):
    write_img2dataset_shard(tmp_path, 0, 4, stats=False)
    write_img2dataset_shard(tmp_path, 1, 2, stats=False)
    shards = ShardSet.open(tmp_path)
    assert [r.num_samples for r in shards.refs] == [4, 2] and shards.incomplete_shards == []
    assert len(list(shards.iter_samples())) == 6


def test_a_read_only_set_is_indexed_into_index_dir_and_found_there(tmp_path, monkeypatch):
    data, work = tmp_path / "laion", tmp_path / "work" / "shard_index"
    write_img2dataset_set(data, (3, 4))
    before = sorted(p.name for p in data.iterdir())
    os.chmod(data, 0o555)
    real_open_write = ShardStore.open_write

    def read_only(store, name):  # root ignores the mode bits: refuse writes into the set's folder ourselves
        if store.root == str(data):
            raise PermissionError(13, "Permission denied", store.path(name))
        return real_open_write(store, name)

    monkeypatch.setattr(ShardStore, "open_write", read_only)
    try:
        shards = ShardSet.open(data, index_dir=work)
        assert sorted(p.name for p in data.iterdir()) == before  # nothing written beside the shards
        (index,) = work.iterdir()
        assert index.name.startswith("laion-") and shards.index_location == str(index)
        assert json.loads((index / "manifest.json").read_text())["indexed_location"] == str(data)
        assert [r.url for r in shards.refs] == [str(data / "00000.tar"), str(data / "00001.tar")]

        monkeypatch.setattr(shard_set_module, "_count_samples", lambda *a: pytest.fail("counted again"))
        assert ShardSet.open(data, index_dir=work).refs == shards.refs
        assert read_shard_refs(data, work) == shards.refs
        assert EpochPlanner([ShardSource(str(data), index_dir=str(work))], seed=1).steps(0, 1, 2) == (2 + 3) // 2
        in_memory = ShardSet.open(data)  # no index_dir: indexed again, kept in memory
        assert in_memory.refs == shards.refs and in_memory.index_location is None
    finally:
        os.chmod(data, 0o755)


def test_an_incomplete_shard_is_left_out_and_said_so_then_taken_in_once_complete(tmp_path, caplog):
    write_img2dataset_shard(tmp_path, 0, 4)
    write_img2dataset_shard(tmp_path, 1, 5, stats=False)  # still downloading: its stats come last
    with caplog.at_level(logging.WARNING, logger="tvp.shards"):
        shards = ShardSet.open(tmp_path)
    assert [r.url.rsplit("/", 1)[-1] for r in shards.refs] == ["00000.tar"]
    assert shards.incomplete_shards == ["00001.tar"]
    assert "00001.tar" in caplog.text and "incomplete" in caplog.text
    assert all(s["__key__"].startswith("00000") for s in shards.iter_samples())

    write_img2dataset_shard(tmp_path, 1, 5)  # the download finished: the index is out of date
    grown = ShardSet.open(tmp_path)
    assert [r.num_samples for r in grown.refs] == [4, 5] and grown.incomplete_shards == []
    assert grown.content_hash != shards.content_hash
    assert grown.manifest["counted_from"]["previous_index"] == 1


def test_a_foreign_set_in_s3_is_indexed_beside_its_shards(tmp_path, s3):
    create_bucket(s3, "laion")
    keys = write_img2dataset_set(tmp_path, (3, 2))
    store = ShardStore("s3://laion/part-0")
    for path in sorted(tmp_path.iterdir()):
        store.write_bytes(path.name, path.read_bytes())
    shards = ShardSet.open("s3://laion/part-0")
    assert [s["__key__"] for s in shards.iter_samples(["txt"])] == keys
    assert store.exists("manifest.json") and store.read_json("sizes.json") == {"00000.tar": 2, "00001.tar": 1}
    assert shards.content_hash == ShardSet.open(tmp_path).content_hash  # same names, sizes and counts
    assert read_shard_refs("s3://laion/part-0")[0] == ShardRef("s3://laion/part-0/00000.tar", 2)


def test_what_is_not_a_shard_set_is_one_clear_line(tmp_path):
    def error(location) -> str:
        with pytest.raises(ShardSetError) as raised:
            ShardSet.open(location)
        message = str(raised.value)
        assert "\n" not in message and str(location).rstrip("/") in message
        return message

    assert "does not exist" in error(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "no NNNNN.tar shards" in error(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    assert "is a file" in error(tmp_path / "file.txt")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "00000.tar").write_bytes(b"this is not a tar at all" * 100)
    assert "00000.tar is not a readable tar" in error(tmp_path / "garbage")
    (tmp_path / "manifest-only").mkdir()
    (tmp_path / "manifest-only" / "manifest.json").write_text("{not json")
    assert "not valid JSON" in error(tmp_path / "manifest-only")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    write_shard(unfinished, 0, samples(2), {})
    assert "unfinished tvp shard set" in error(unfinished)
    assert "no manifest.json" in error(unfinished)
    with pytest.raises(ShardSetError, match="cannot open"):
        ShardSet.open("nosuchscheme://bucket/x")


def test_a_shard_that_breaks_while_reading_names_the_set(tmp_path):
    write_tvp_set(tmp_path)
    data = (tmp_path / "00001.tar").read_bytes()
    (tmp_path / "00001.tar").write_bytes(data[:700])  # truncated after the set was finished
    with pytest.raises(ShardSetError, match="cannot read shard"):
        list(ShardSet.open(tmp_path).iter_samples())
    assert tarfile.is_tarfile(tmp_path / "00000.tar")
