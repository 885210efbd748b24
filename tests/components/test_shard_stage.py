"""The generic shard stage with a toy source (numbers → text samples): plain classes, no Ray in the source."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Iterator

import pyarrow as pa
import pytest

from components.data.shards.shard_reader import ShardSetError, iter_samples
from components.data.shards.shard_source import ShardContent
from components.data.shards.shard_stage import build_shard_set


@dataclass(frozen=True)
class Numbers:
    """The integers below ``count``, in batches; ``fail_at`` makes the read break there, as a malformed file would."""

    count: int
    fail_at: int | None = None
    input_name: ClassVar[str] = "range"

    def describe(self) -> dict:
        return {"count": self.count}

    def read(self, batch_rows: int) -> Iterator[pa.Table]:
        for start in range(0, self.count, batch_rows):
            if self.fail_at is not None and start >= self.fail_at:
                raise ValueError(f"cannot read past {start}")
            yield pa.table({"n": list(range(start, min(start + batch_rows, self.count)))})


@dataclass(frozen=True)
class SpellOut:
    """Each number becomes a sample ``"<prefix> <n>"``; multiples of ``skip`` are counted as failures."""

    prefix: str
    skip: int = 5

    def __call__(self, rows: pa.Table, first_row: int) -> ShardContent:
        numbers = rows.column("n").to_pylist()
        kept = [n for n in numbers if n % self.skip]
        samples = ({"__key__": f"{first_row + i:06d}", "txt": f"{self.prefix} {n}"}
                   for i, n in enumerate(numbers) if n % self.skip)
        return ShardContent(samples, lambda: {"input_rows": len(numbers),
                                              "errors": {"skipped": len(numbers) - len(kept)}})


def test_a_toy_source_makes_a_complete_set(ray_address, tmp_path):
    planned, done = [], []
    manifest = build_shard_set(Numbers(23), SpellOut("number"), tmp_path, {"prefix": "number"}, 10,
                               on_planned=lambda *p: planned.append(p), on_shard_done=lambda s, d, t: done.append(d))
    assert planned == [(3, 3, 23)] and sorted(done) == [1, 2, 3]
    assert manifest["num_shards"] == 3 and manifest["num_input_rows"] == 23 and manifest["num_samples"] == 18
    assert manifest["errors"] == {"skipped": 5} and manifest["source"] == {"count": 23}
    assert manifest["config"] == {"prefix": "number", "rows_per_shard": 10}
    assert json.loads((tmp_path / "sizes.json").read_text()) == {"00000.tar": 8, "00001.tar": 8, "00002.tar": 2}
    samples = list(iter_samples(tmp_path))
    assert samples[0]["__key__"] == "000001" and samples[-1]["txt"] == b"number 22"
    assert not (tmp_path / "_inputs").exists() and not (tmp_path / "00000.parquet").exists()


def test_resume_redoes_only_missing_shards_and_gives_the_same_set(ray_address, tmp_path):
    first = build_shard_set(Numbers(23), SpellOut("n"), tmp_path, {}, 10)
    kept = (tmp_path / "00000_stats.json").stat().st_mtime_ns
    (tmp_path / "00001_stats.json").unlink()  # a tar without its stats is unfinished
    (tmp_path / "00002.tar").unlink()
    (tmp_path / "00002_stats.json").unlink()
    (tmp_path / "00002.tar.tmp").write_bytes(b"half a tar")  # left by a killed writer
    redone = []
    second = build_shard_set(Numbers(23), SpellOut("n"), tmp_path, {}, 10,
                             on_shard_done=lambda s, d, t: redone.append((s["shard"], t)))
    assert sorted(redone) == [("00001", 3), ("00002", 3)]
    assert (tmp_path / "00000_stats.json").stat().st_mtime_ns == kept
    assert second["content_hash"] == first["content_hash"]
    assert not (tmp_path / "00002.tar.tmp").exists()


def test_a_folder_made_from_other_inputs_or_config_is_refused(ray_address, tmp_path):
    build_shard_set(Numbers(23), SpellOut("n"), tmp_path, {"prefix": "n"}, 10)
    with pytest.raises(ShardSetError, match="another range or config"):
        build_shard_set(Numbers(23), SpellOut("m"), tmp_path, {"prefix": "m"}, 10)
    with pytest.raises(ShardSetError, match="another range or config"):
        build_shard_set(Numbers(24), SpellOut("n"), tmp_path, {"prefix": "n"}, 10)


def test_inputs_that_break_while_planning_leave_no_folder_behind(ray_address, tmp_path):
    out = tmp_path / "set"
    with pytest.raises(ValueError, match="cannot read past 10"):
        build_shard_set(Numbers(23, fail_at=10), SpellOut("n"), out, {}, 10)
    assert not out.exists()


def test_a_file_named_like_a_shard_that_tvp_did_not_make_is_neither_deleted_nor_overwritten(ray_address, tmp_path):
    (tmp_path / "00000.parquet").write_bytes(b"the user's own table")
    (tmp_path / "2024_report.parquet").write_bytes(b"unrelated")
    with pytest.raises(ShardSetError, match="holds 00000.parquet, which this ingestion did not make"):
        build_shard_set(Numbers(23), SpellOut("n"), tmp_path, {}, 10)
    assert (tmp_path / "00000.parquet").read_bytes() == b"the user's own table"
    (tmp_path / "00000.parquet").unlink()
    build_shard_set(Numbers(23), SpellOut("n"), tmp_path, {}, 10)
    assert (tmp_path / "2024_report.parquet").read_bytes() == b"unrelated"


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(ray_address, tmp_path):
    from components.data.shards.shard_stage import output_lock
    from components.data.shards.shard_store import ShardStore

    with output_lock(ShardStore(tmp_path), str(tmp_path)):
        with pytest.raises(ShardSetError, match="another run is writing"):
            build_shard_set(Numbers(23), SpellOut("n"), tmp_path, {}, 10)
    build_shard_set(Numbers(23), SpellOut("n"), tmp_path, {}, 10)  # released: the next run goes ahead
