"""``tvp ingest image-text`` on a multi-node Ray cluster, table and shards in S3 (moto's server on loopback).

The cluster's head has no CPUs, so every shard is written by a worker node;
images come from the loopback image server, which the run allows by
``--allow-address``. The URLs name 127.0.0.1 only, so nothing could leave the
machine even if the guard were broken.
"""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
from PIL import Image

from tests.conftest import create_bucket, run_tvp
from tests.image_server import ImageServer

SHARDS, ROWS_PER_SHARD = 6, 3


def test_ingest_on_a_multi_node_cluster_from_and_to_object_storage(multi_node_cluster, s3_env, monkeypatch):
    cluster, _ = multi_node_cluster
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    create_bucket(s3_env, "tables")
    create_bucket(s3_env, "shards")
    with ImageServer() as server:
        urls = [f"{server.base_url}/img/{i}.jpg" for i in range(SHARDS * ROWS_PER_SHARD - 1)]
        urls.append(f"{server.base_url}/dup/0.jpg")  # the last row repeats the first image
        s3, _ = pyarrow.fs.FileSystem.from_uri("s3://tables")
        half = len(urls) // 2
        for part, rows in enumerate((urls[:half], urls[half:])):
            with s3.open_output_stream(f"tables/pairs/part-{part}.parquet") as f:
                pq.write_table(pa.table({"url": rows, "caption": [f"picture {u.rsplit('/', 1)[1]}" for u in rows]}), f)

        result = run_tvp("ingest", "image-text", "s3://tables/pairs", "--output", "s3://shards/set",
                         "--rows-per-shard", str(ROWS_PER_SHARD), "--image-size", "16", "--processes", "4",
                         "--allow-address", "127.0.0.1", "--address", cluster.address)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(urls) - 1} samples from {len(urls)} rows in {SHARDS} shards" in result.stdout

    names = {i.base_name for i in s3.get_file_info(pyarrow.fs.FileSelector("shards/set"))}
    expected = {f"{i:05d}{suffix}" for i in range(SHARDS) for suffix in (".tar", ".parquet", "_stats.json")}
    assert names == expected | {"manifest.json", "sizes.json"}  # the planned inputs are gone
    manifest = json.loads(s3.open_input_stream("shards/set/manifest.json").read())
    assert manifest["num_samples"] == len(urls) - 1 and manifest["errors"] == {"duplicate": 1}
    assert manifest["source"]["files"] == ["tables/pairs/part-0.parquet", "tables/pairs/part-1.parquet"]
    with tarfile.open(fileobj=io.BytesIO(s3.open_input_stream("shards/set/00001.tar").read())) as tar:
        assert sorted(tar.getnames()) == [f"{i:09d}.{e}" for i in (3, 4, 5) for e in ("jpg", "json", "txt")]
        assert Image.open(tar.extractfile("000000003.jpg")).size == (16, 16)

    # Every shard was written on a worker node (the head has no CPUs), and not all on one.
    writers = [json.loads(s3.open_input_stream(f"shards/set/{i:05d}_stats.json").read())["node_id"]
               for i in range(SHARDS)]
    worker_ids = {node.node_id for node in cluster.worker_nodes}
    assert set(writers) <= worker_ids and len(set(writers)) >= 2, writers

    report = run_tvp("inspect", "s3://shards/set")
    assert report.returncode == 0, report.stderr
    assert f"{len(urls) - 1} samples from {len(urls)} input rows" in report.stdout and "duplicate" in report.stdout
    assert s3.get_file_info("shards/set/contact_sheet.jpg").size > 0
