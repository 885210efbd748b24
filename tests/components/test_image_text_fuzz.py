"""No row can fail its shard: a seeded fuzz of 2,000 hostile rows through the per-row function and the
shard writer, and every sample's ``.json`` strict JSON whatever the table's extra columns hold."""

from __future__ import annotations

import datetime
import decimal
import io
import json
import math
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from components.data.ingest.image_processing import ImageConfig
from components.data.ingest.image_text_shard import IngestConfig, build_image_text_shard
from components.data.ingest.json_values import json_value
from components.data.ingest.url_fetcher import FetchConfig, UrlFetcher
from components.data.shards.shard_writer import write_shard

ROWS_PER_TABLE = 500
HOSTILE_URLS = ["https://example.com\x00x/", "http://exa\tmple.com/a.jpg", "http://[::1", "http://%zz/",
                "file://host/etc/passwd", "ftp://example.com/a.jpg", "", "   ", "http://", "https://:0/",
                "picture\x7f.png", "\x00", "http://example.com/" + "a" * 5000]


def _no_network(host: str, port: int):
    raise OSError("no network in this test")


def _refuse_connect(address, timeout):
    raise OSError("no connection in this test")


def _strict(data: bytes):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(data, parse_constant=refuse)


def _random_text(rng: np.random.Generator) -> str:
    # Any code point but the surrogates (pyarrow strings are valid UTF-8), control characters included.
    points = rng.integers(0, 0x10FFFF, size=int(rng.integers(0, 40)))
    return "".join(chr(p) for p in points if not 0xD800 <= p <= 0xDFFF)


def _random_bytes(rng: np.random.Generator) -> bytes:
    kind = rng.integers(4)
    if kind == 0:
        return b"\xed\xa0\x80 a lone surrogate, as bytes"
    if kind == 1:
        return bytes(rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8))
    return _random_text(rng).encode("utf-8", "surrogatepass")


def hostile_tables(rng: np.random.Generator, good_paths: list[str]) -> list[pa.Table]:
    """Four tables of hostile rows; each has different column types (a table's column has one type)."""
    n = ROWS_PER_TABLE

    def urls() -> list[str | None]:
        out = []
        for _ in range(n):
            kind = rng.integers(5)
            out.append(None if kind == 0 else HOSTILE_URLS[int(rng.integers(len(HOSTILE_URLS)))] if kind == 1
                       else good_paths[int(rng.integers(len(good_paths)))] if kind == 2
                       else f"http://{_random_text(rng)}/x.jpg" if kind == 3 else _random_text(rng))
        return out

    captions = [_random_bytes(rng) if rng.random() < 0.8 else None for _ in range(n)]
    floats = rng.choice([math.nan, math.inf, -math.inf, 1.5, 0.0], size=n).tolist()
    return [
        pa.table({"url": urls(), "caption": captions, "score": floats,
                  "taken": [datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=int(s))
                            for s in rng.integers(0, 10**8, n)],
                  "price": pa.array([decimal.Decimal(f"{int(v)}.25") for v in rng.integers(0, 999, n)],
                                    type=pa.decimal128(10, 2)),
                  "blob": [_random_bytes(rng) for _ in range(n)]}),
        pa.table({"url": pa.array([_random_bytes(rng) for _ in range(n)], type=pa.binary()),
                  "caption": [_random_text(rng) for _ in range(n)],
                  "when": pa.array([datetime.date(2021, 5, 1)] * n), "span": pa.array(
                      [datetime.timedelta(seconds=3)] * n, type=pa.duration("s"))}),
        pa.table({"url": pa.array(rng.integers(-5, 5, n).tolist(), type=pa.int64()),
                  "caption": [_random_text(rng) for _ in range(n)],
                  "nested": [{"a": [math.nan, 1.0], "b": _random_text(rng)} for _ in range(n)]}),
        pa.table({"url": urls(), "caption": [_random_text(rng) for _ in range(n)],
                  "tags": [[_random_text(rng), None] for _ in range(n)], "flag": rng.random(n) < 0.5,
                  "at": pa.array([datetime.time(12, 30)] * n)}),
    ]


@pytest.fixture
def images(tmp_path):
    paths = []
    for i in range(5):
        Image.new("RGB", (24 + i, 20), (40 * i, 90, 200)).save(tmp_path / f"good{i}.png")
        paths.append(f"good{i}.png")
    return paths


def test_every_hostile_row_gets_a_status_and_every_json_is_strict(tmp_path, images):
    rng = np.random.default_rng(1234)
    fetcher = UrlFetcher(FetchConfig(timeout_s=0.5, retries=0), resolver=_no_network, connector=_refuse_connect)
    cfg = IngestConfig(image=ImageConfig(image_size=16), threads=8)
    total, categories = 0, {}
    for shard_id, table in enumerate(hostile_tables(rng, images)):
        content = build_image_text_shard(table, shard_id * ROWS_PER_TABLE, cfg, str(tmp_path), fetcher)
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        stats = write_shard(out, shard_id, content.samples, content.stats, content.rows)
        status = pq.read_table(out / f"{shard_id:05d}.parquet").to_pylist()
        assert len(status) == stats["input_rows"] == table.num_rows
        assert {s["status"] for s in status} <= {"success", "failed"}
        assert all(s["error_category"] for s in status if s["status"] == "failed")
        assert stats["successes"] + stats["failures"] == table.num_rows
        for row in status:
            if row["status"] == "failed":
                categories[row["error_category"]] = categories.get(row["error_category"], 0) + 1
        with tarfile.open(out / f"{shard_id:05d}.tar") as tar:
            jsons = [_strict(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
        assert len(jsons) == stats["successes"]
        total += table.num_rows
    assert total >= 2000
    assert categories.get("invalid_url", 0) and categories.get("missing_url", 0)
    assert sum(categories.values()) < total  # some rows (the good images) did make samples


def test_extra_columns_follow_the_stated_json_rule(tmp_path, images):
    table = pa.table({
        "url": [images[0]], "caption": [b"a caption"], "score": [math.nan], "big": [math.inf],
        "taken": [datetime.datetime(2024, 2, 3, 4, 5, 6)], "price": pa.array([decimal.Decimal("1.10")]),
        "blob": [b"\x00\x01"], "tags": [["x", None]],
    })
    content = build_image_text_shard(table, 0, IngestConfig(image=ImageConfig(image_size=16)), str(tmp_path))
    sample = next(iter(content.samples))
    meta = _strict(json.dumps(sample["json"], allow_nan=False).encode())
    assert meta["score"] is None and meta["big"] is None
    assert meta["taken"] == "2024-02-03T04:05:06" and meta["price"] == "1.10"
    assert "blob" not in meta and meta["tags"] == ["x", None]
    assert json_value({"k": b"x", "t": "a\ud800b"}) == {"t": "a?b"}
