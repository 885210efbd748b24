"""``tvp ingest image-text`` reading its table from and writing its shards to S3 (moto's server on loopback)."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
from PIL import Image

from tests.conftest import create_bucket, run_tvp


def test_table_and_shards_in_object_storage(s3_env, monkeypatch, tmp_path):
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    create_bucket(s3_env, "tables")
    create_bucket(s3_env, "shards")
    urls = []
    for i in range(5):
        Image.new("RGB", (30, 20 + i), (40 * i, 90, 0)).save(tmp_path / f"{i}.png")
        urls.append((tmp_path / f"{i}.png").as_uri())
    s3, _ = pyarrow.fs.FileSystem.from_uri("s3://tables")
    with s3.open_output_stream("tables/pairs/part-0.parquet") as f:
        pq.write_table(pa.table({"url": urls[:3], "caption": ["a", "b", "c"]}), f)
    with s3.open_output_stream("tables/pairs/part-1.parquet") as f:
        pq.write_table(pa.table({"url": urls[3:] + [urls[0]], "caption": ["d", "e", "a again"]}), f)

    env = {**s3_env, "RAY_ADDRESS": None}  # its own local Ray, whose workers see the S3 variables
    result = run_tvp("ingest", "image-text", "s3://tables/pairs", "--output", "s3://shards/set",
                     "--rows-per-shard", "4", "--image-size", "16", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "5 samples from 6 rows in 2 shards" in result.stdout

    names = sorted(i.base_name for i in s3.get_file_info(pyarrow.fs.FileSelector("shards/set")))
    assert names == ["00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar",
                     "00001_stats.json", "manifest.json", "sizes.json"]  # the planned inputs are gone
    manifest = json.loads(s3.open_input_stream("shards/set/manifest.json").read())
    assert manifest["num_samples"] == 5 and manifest["errors"] == {"duplicate": 1}
    assert manifest["source"]["files"] == ["tables/pairs/part-0.parquet", "tables/pairs/part-1.parquet"]
    with tarfile.open(fileobj=io.BytesIO(s3.open_input_stream("shards/set/00001.tar").read())) as tar:
        assert sorted(tar.getnames()) == [f"00000000{i}.{e}" for i in (4,) for e in ("jpg", "json", "txt")]

    report = run_tvp("inspect", "s3://shards/set", env=env)
    assert report.returncode == 0, report.stderr
    assert "5 samples from 6 input rows" in report.stdout and "duplicate" in report.stdout
    assert s3.get_file_info("shards/set/contact_sheet.jpg").size > 0
