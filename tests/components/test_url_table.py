import gzip
import json
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.data.ingest.url_table import (
    TableError,
    TableSpec,
    describe,
    iter_row_batches,
)
from components.data.shards.shard_source import cut_shards


def iter_shards(spec: TableSpec, rows_per_shard: int):
    """The table cut into shards as the shard stage plans them."""
    return cut_shards(iter_row_batches(spec, rows_per_shard), rows_per_shard)

ROWS = [
    {"url": "http://a/0.jpg", "caption": 'a "quoted", comma', "width": 10},
    {"url": "http://a/1.jpg", "caption": "plain", "width": 20},
    {"url": "http://a/2.jpg", "caption": "über café", "width": 30},
]


def write_text(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def csv_bytes(rows: list[dict], sep: str = ",") -> bytes:
    def cell(value) -> str:
        text = str(value)
        return '"' + text.replace('"', '""') + '"' if sep == "," and any(c in text for c in '",\n') else text

    lines = [sep.join(rows[0])] + [sep.join(cell(v) for v in row.values()) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def jsonl_bytes(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)


def write_rows(path: Path, rows: list[dict]) -> Path:
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if name.endswith(".csv"):
        return write_text(path, csv_bytes(rows))
    if name.endswith(".tsv"):
        return write_text(path, csv_bytes(rows, "\t"))
    return write_text(path, jsonl_bytes(rows))


def read_all(spec: TableSpec, batch_rows: int = 1000) -> pa.Table:
    return pa.concat_tables(iter_row_batches(spec, batch_rows))


def one_line_error(spec: TableSpec, fragment: str) -> str:
    with pytest.raises(TableError) as err:
        read_all(spec)
    message = str(err.value)
    assert "\n" not in message and fragment in message, message
    return message


FORMATS = ["t.parquet", "t.csv", "t.csv.gz", "t.tsv", "t.tsv.gz", "t.jsonl", "t.jsonl.gz", "t.json.gz"]


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_reads_to_the_output_contract(tmp_path, name):
    table = read_all(TableSpec(str(write_rows(tmp_path / name, ROWS))))
    assert table.column_names == ["url", "caption", "width"]
    assert table.schema.field("url").type == pa.string() and table.schema.field("caption").type == pa.binary()
    assert table.column("url").to_pylist() == [r["url"] for r in ROWS]
    assert table.column("caption").to_pylist() == [r["caption"].encode() for r in ROWS]
    # CSV extras stay strings (types inferred from one block break on the next); others keep their types.
    expected = ["10", "20", "30"] if ".csv" in name or ".tsv" in name else [10, 20, 30]
    assert table.column("width").to_pylist() == expected


def test_explicit_format_overrides_the_extension(tmp_path):
    path = write_text(tmp_path / "rows.txt", csv_bytes(ROWS, "\t"))
    assert read_all(TableSpec(str(path), format="tsv")).num_rows == 3


def test_laion_column_names_and_file_url(tmp_path):
    rows = [{"URL": r["url"], "TEXT": r["caption"], "similarity": 0.3} for r in ROWS]
    path = write_rows(tmp_path / "laion.parquet", rows)
    table = read_all(TableSpec(path.as_uri(), url_column="URL", caption_column="TEXT"))
    assert table.column_names == ["url", "caption", "similarity"]
    assert table.column("caption").to_pylist()[2] == "über café".encode()


def test_cc3m_headerless_tsv_with_bare_quotes(tmp_path):
    path = write_text(tmp_path / "Train_GCC-training.tsv", b'a "quoted caption\thttp://x/1\nsecond\thttp://x/2\n')
    table = read_all(TableSpec(str(path), header=False, column_names=("caption", "url")))
    assert table.column("url").to_pylist() == ["http://x/1", "http://x/2"]
    assert table.column("caption").to_pylist() == [b'a "quoted caption', b"second"]


def test_header_names_can_be_replaced(tmp_path):
    path = write_rows(tmp_path / "t.csv", ROWS)
    table = read_all(TableSpec(str(path), column_names=["link", "text", "w"], url_column="link", caption_column="text"))
    assert table.column_names == ["url", "caption", "w"] and table.num_rows == 3


@pytest.mark.parametrize("name", ["t.csv", "t.tsv.gz", "t.jsonl"])
def test_invalid_utf8_caption_survives_as_bytes(tmp_path, name):
    bad = b"caf\xe9 \xff"
    if "jsonl" in name:
        data = b'{"url": "http://a/\xff.jpg", "caption": "' + bad + b'"}\n{"url": "http://b", "caption": "ok"}\n'
    else:
        sep = b"\t" if ".tsv" in name else b","
        data = b"url" + sep + b"caption\nhttp://a" + sep + bad + b"\nhttp://b" + sep + b"ok\n"
    table = read_all(TableSpec(str(write_text(tmp_path / name, data))))
    assert table.column("caption").to_pylist() == [bad, b"ok"]
    assert table.column("url").to_pylist()[1] == "http://b"


def test_jsonl_rows_may_lack_keys_and_skip_blank_lines(tmp_path):
    data = b'{"url": "u0", "caption": "c0", "extra": [1, 2]}\n\n{"url": "u1", "caption": null}\n'
    table = read_all(TableSpec(str(write_text(tmp_path / "t.jsonl", data))))
    assert table.to_pylist() == [
        {"url": "u0", "caption": b"c0", "extra": [1, 2]},
        {"url": "u1", "caption": None, "extra": None},
    ]


def test_folder_reads_matching_files_in_name_order(tmp_path):
    write_rows(tmp_path / "b.csv.gz", ROWS[2:])
    write_rows(tmp_path / "a.csv", ROWS[:2])
    (tmp_path / "README.md").write_text("not a table")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / ".hidden.csv").write_text("junk")
    table = read_all(TableSpec(str(tmp_path)))
    assert table.column("url").to_pylist() == [r["url"] for r in ROWS]
    info = describe(TableSpec(str(tmp_path)))
    assert info["format"] == "csv" and info["columns"] == ["url", "caption", "width"]
    assert [Path(f).name for f in info["files"]] == ["a.csv", "b.csv.gz"]


def test_batches_respect_batch_rows(tmp_path):
    rows = [{"url": f"u{i}", "caption": f"c{i}"} for i in range(25)]
    path = write_rows(tmp_path / "t.csv", rows)
    sizes = [t.num_rows for t in iter_row_batches(TableSpec(str(path)), batch_rows=10)]
    assert sizes == [10, 10, 5]


def test_shards_are_cut_across_files_with_global_rows(tmp_path):
    schema = pa.schema([("url", pa.string()), ("caption", pa.string()), ("n", pa.int64())])
    start = 0
    for name, count in {"00.parquet": 5, "01.parquet": 0, "02.parquet": 7, "03.parquet": 3}.items():
        rows = [{"url": f"u{i}", "caption": f"c{i}", "n": i} for i in range(start, start + count)]
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp_path / name)
        start += count
    shards = list(iter_shards(TableSpec(str(tmp_path)), rows_per_shard=4))
    assert [(sid, first, t.num_rows) for sid, first, t in shards] == [(0, 0, 4), (1, 4, 4), (2, 8, 4), (3, 12, 3)]
    for _, first, table in shards:
        assert table.column("n").to_pylist() == list(range(first, first + table.num_rows))


def test_exact_multiple_yields_no_empty_last_shard(tmp_path):
    path = write_rows(tmp_path / "t.jsonl", [{"url": f"u{i}", "caption": "c"} for i in range(6)])
    assert [t.num_rows for _, _, t in iter_shards(TableSpec(str(path)), 3)] == [3, 3]


def test_spec_pickles():
    spec = TableSpec("s3://bucket/laion", url_column="URL", column_names=["a"])
    assert pickle.loads(pickle.dumps(spec)) == spec and spec.column_names == ("a",)


def test_missing_path(tmp_path):
    one_line_error(TableSpec(str(tmp_path / "nope.parquet")), "does not exist")


def test_folder_without_tables(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    one_line_error(TableSpec(str(tmp_path)), "holds no table files")
    write_rows(tmp_path / "t.csv", ROWS)
    one_line_error(TableSpec(str(tmp_path), format="parquet"), "holds no parquet files")


def test_unsupported_formats(tmp_path):
    with pytest.raises(TableError, match="unsupported table format 'xml'"):
        TableSpec("x", format="xml")
    one_line_error(TableSpec(str(write_text(tmp_path / "t.xlsx", b"x"))), "cannot tell the format")


def test_mixed_folder_needs_a_format(tmp_path):
    write_rows(tmp_path / "a.csv", ROWS)
    write_rows(tmp_path / "b.parquet", ROWS)
    one_line_error(TableSpec(str(tmp_path)), "mixes formats (csv, parquet)")
    assert read_all(TableSpec(str(tmp_path), format="parquet")).num_rows == 3


@pytest.mark.parametrize("name", ["t.parquet", "t.csv", "t.jsonl"])
def test_missing_columns_name_the_columns_present(tmp_path, name):
    path = write_rows(tmp_path / name, ROWS)
    message = one_line_error(TableSpec(str(path), caption_column="TEXT"), "has no column 'TEXT'")
    assert "it has: url, caption, width" in message and "t." in message


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_text(tmp_path / "t.jsonl.gz", jsonl_bytes(ROWS[:2]) + b'{"url": "x", \n')
    one_line_error(TableSpec(str(path)), "malformed JSON at " + str(path) + ":3")
    write_text(path, b'["not", "an object"]\n')
    one_line_error(TableSpec(str(path)), "a line must be an object")


def test_malformed_csv_is_one_line(tmp_path):
    path = write_text(tmp_path / "t.csv", b"url,caption\nhttp://a,one\nhttp://b,two,three\nhttp://c,\n")
    message = one_line_error(TableSpec(str(path)), "cannot read " + str(path) + " as csv")
    assert "Expected 2 columns, got 3" in message


def test_column_names_count_must_match(tmp_path):
    path = write_text(tmp_path / "t.tsv", b"cap\thttp://x\textra\n")
    one_line_error(TableSpec(str(path), header=False, column_names=("caption", "url")), "column_names has 2 names but")
    parquet = write_rows(tmp_path / "t.parquet", ROWS)
    one_line_error(TableSpec(str(parquet), column_names=("caption", "url", "w")), "applies to csv/tsv files only")


def test_corrupt_gzip_and_parquet_are_table_errors(tmp_path):
    one_line_error(TableSpec(str(write_text(tmp_path / "t.parquet", b"PAR1 not really"))), "as parquet")
    (tmp_path / "t.jsonl.gz").write_bytes(b"\x1f\x8bjunk")
    one_line_error(TableSpec(str(tmp_path / "t.jsonl.gz")), "as jsonl")


def test_a_json_line_longer_than_the_limit_is_refused_before_it_fills_memory(tmp_path, monkeypatch):
    from components.data.ingest import url_table

    monkeypatch.setattr(url_table, "MAX_JSON_LINE_BYTES", 1000)
    path = write_text(tmp_path / "t.jsonl", jsonl_bytes(ROWS[:1]) + b'{"url": "' + b"x" * 5000 + b'"}\n')
    one_line_error(TableSpec(str(path)), f"line too long at {path}:2: more than 1000 bytes")
