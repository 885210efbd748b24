"""The Ray Data sharding stage against the session's Ray head."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.data.ingest.image_processing import ImageConfig
from components.data.ingest.image_text_stage import shard_image_text_table
from components.data.ingest.image_text_shard import IngestConfig
from components.data.shards.shard_reader import ShardSetError, iter_samples
from components.data.ingest.url_table import TableSpec

CFG = IngestConfig(ImageConfig(image_size=16))


def make_table(tmp_path, rows_extra=()):
    images = tmp_path / "img"
    images.mkdir()
    rows = {"url": [], "caption": [], "label": []}
    for i in range(7):
        Image.new("RGB", (20 + i, 20), (i * 30, 0, 0)).save(images / f"{i}.png")
        rows["url"].append(f"img/{i}.png")
        rows["caption"].append(f"red square {i}")
        rows["label"].append(i)
    (images / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    for url, caption in [("img/bad.jpg", "corrupt"), ("img/missing.png", "missing"), ("img/0.png", "  ")]:
        rows["url"].append(url)
        rows["caption"].append(caption)
        rows["label"].append(-1)
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table(rows), path, row_group_size=3)
    return path


def test_shards_count_failures_by_category_and_keep_every_row(ray_address, tmp_path):
    table = TableSpec(str(make_table(tmp_path)))
    out = tmp_path / "shards"
    seen = []
    manifest = shard_image_text_table(table, out, CFG, 4,
                                      on_shard_done=lambda s, d, t: seen.append((d, t)))
    assert manifest["num_samples"] == 7 and manifest["num_input_rows"] == 10 and manifest["num_shards"] == 3
    assert manifest["errors"] == {"decode": 1, "read": 1, "empty_caption": 1}
    assert sorted(seen) == [(1, 3), (2, 3), (3, 3)]
    samples = list(iter_samples(out))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(7)]
    meta = json.loads(samples[3]["json"])
    assert meta["label"] == 3 and meta["url"] == "img/3.png" and meta["original_width"] == 23
    assert Image.open(io.BytesIO(samples[3]["jpg"])).size == (16, 16)
    status = pq.read_table(out / "00002.parquet").to_pylist()
    assert [r["status"] for r in status] == ["failed", "failed"]
    assert status[1]["error_category"] == "empty_caption" and status[0]["error_category"] == "read"


def test_rerun_completes_only_missing_shards(ray_address, tmp_path):
    table = TableSpec(str(make_table(tmp_path)))
    out = tmp_path / "shards"
    first = shard_image_text_table(table, out, CFG, 4)
    kept = (out / "00000_stats.json").stat().st_mtime_ns
    for name in ("00001.tar", "00001.parquet", "00001_stats.json", "manifest.json"):
        (out / name).unlink()
    (out / "00002_stats.json").unlink()  # a tar without stats is incomplete
    redone = []
    second = shard_image_text_table(table, out, CFG, 4,
                                    on_shard_done=lambda s, d, t: redone.append(s["shard"]))
    assert sorted(redone) == ["00001", "00002"]
    assert (out / "00000_stats.json").stat().st_mtime_ns == kept
    assert second["content_hash"] == first["content_hash"]


def test_a_folder_of_shards_from_another_config_is_refused(ray_address, tmp_path):
    table = TableSpec(str(make_table(tmp_path)))
    out = tmp_path / "shards"
    shard_image_text_table(table, out, CFG, 4)
    with pytest.raises(ShardSetError, match="another table or config"):
        shard_image_text_table(table, out, IngestConfig(ImageConfig(image_size=24)), 4)
