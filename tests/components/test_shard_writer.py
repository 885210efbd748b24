import json
import tarfile

import pytest
import webdataset as wds

from components.data.shards.shard_reader import ShardSetError, iter_samples, read_manifest, shard_paths
from components.data.shards.shard_writer import completed_shards, finalize_shard_set, remove_partial_files, write_shard


def samples(n: int, start: int = 0):
    for i in range(start, start + n):
        yield {"__key__": f"{i:09d}", "jpg": bytes([i % 256]) * 10, "txt": f"caption {i}", "json": {"i": i}}


def test_round_trip_through_our_reader_and_plain_webdataset(tmp_path):
    write_shard(tmp_path, 0, samples(3), {"input_rows": 3})
    write_shard(tmp_path, 1, samples(2, start=3), {"input_rows": 2})
    manifest = finalize_shard_set(tmp_path, {"table": "t"}, {"size": 1})
    assert manifest["num_samples"] == 5 and manifest["num_shards"] == 2
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 3, "00001.tar": 2}
    ours = list(iter_samples(tmp_path))
    assert [s["__key__"] for s in ours] == [f"{i:09d}" for i in range(5)]
    assert ours[4]["txt"] == b"caption 4" and json.loads(ours[4]["json"]) == {"i": 4}
    plain = list(wds.WebDataset(shard_paths(tmp_path), shardshuffle=False).decode())
    assert plain[1]["txt"] == "caption 1" and plain[1]["json"] == {"i": 1} and plain[1]["jpg"] == bytes([1]) * 10
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert tar.getnames()[:3] == ["000000000.jpg", "000000000.json", "000000000.txt"]


def test_stats_carry_count_size_and_digest(tmp_path):
    stats = write_shard(tmp_path, 7, samples(2), {"input_rows": 3, "errors": {"decode": 1}})
    assert stats["shard"] == "00007" and stats["count"] == 2 and stats["errors"] == {"decode": 1}
    assert stats["bytes"] == (tmp_path / "00007.tar").stat().st_size and len(stats["sha256"]) == 64
    assert completed_shards(tmp_path)[7] == stats


def test_a_failing_writer_leaves_no_visible_shard(tmp_path):
    def broken():
        yield from samples(2)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_shard(tmp_path, 0, broken(), {})
    assert not list(tmp_path.glob("*.tar")) and not completed_shards(tmp_path)
    remove_partial_files(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_tars_without_stats_are_incomplete_and_removed(tmp_path):
    write_shard(tmp_path, 0, samples(1), {})
    (tmp_path / "00001.tar").write_bytes(b"half a shard")
    remove_partial_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "00000_stats.json"]


def test_keys_with_dots_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dot"):
        write_shard(tmp_path, 0, [{"__key__": "a.b", "txt": "x"}], {})


def test_content_hash_changes_with_the_samples(tmp_path):
    a, b, again = tmp_path / "a", tmp_path / "b", tmp_path / "again"
    for folder in (a, b, again):
        folder.mkdir()
    write_shard(a, 0, samples(3), {})
    write_shard(b, 0, samples(3, start=1), {})
    write_shard(again, 0, samples(3), {"duration_s": 9.9})
    hash_a = finalize_shard_set(a, {}, {})["content_hash"]
    assert hash_a != finalize_shard_set(b, {}, {})["content_hash"]
    assert hash_a == finalize_shard_set(again, {}, {})["content_hash"]  # same samples, written later: same hash
    assert read_manifest(a)["content_hash"] == hash_a


def test_reading_an_unfinished_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ShardSetError, match="no manifest.json"):
        read_manifest(tmp_path)
    with pytest.raises(ShardSetError, match="no sizes.json"):
        shard_paths(tmp_path)


def test_clean_up_removes_only_tvps_own_temporaries(tmp_path):
    from components.data.shards.atomic_files import temporary_name, write_atomic

    write_atomic(tmp_path / "a.json", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # the temporary was renamed away
    assert temporary_name("x") != temporary_name("x")  # unique: two writers never share one
    for name in (temporary_name("00003.tar"), temporary_name("manifest.json"), "00004_stats.json.tmp"):
        (tmp_path / name).write_bytes(b"left by a killed writer")
    (tmp_path / "notes.tmp").write_bytes(b"the user's")
    (tmp_path / temporary_name("holiday.jpg")).write_bytes(b"not a shard file")
    remove_partial_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.json", "notes.tmp", *[
        p.name for p in tmp_path.iterdir() if "holiday" in p.name]])
    assert any("holiday" in p.name for p in tmp_path.iterdir())
