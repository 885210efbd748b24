"""Local image locations are read only by consent: inside an allowed root, regular files, within limits."""

from __future__ import annotations

import os
import threading

import pyarrow as pa
import pytest
from PIL import Image

from components.data.ingest.image_processing import ImageConfig, ImageError
from components.data.ingest.image_text_shard import IngestConfig, build_image_text_shard
from components.data.ingest.local_files import REFUSED, LocalFiles
from components.data.ingest.url_fetcher import FetchConfig


@pytest.fixture
def layout(tmp_path):
    """table/ (the table's folder, with a picture and a link out), shared/ (a root given on purpose), private/."""
    table, shared, private = tmp_path / "table", tmp_path / "shared", tmp_path / "private"
    for folder in (table, shared, private):
        folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(table / "in.png")
    Image.new("RGB", (8, 8), "blue").save(shared / "s.png")
    (private / "secret.png").write_bytes((table / "in.png").read_bytes())
    (table / "escape.png").symlink_to(private / "secret.png")
    (table / "alias.png").symlink_to(table / "in.png")
    return table, shared, private


def category(local: LocalFiles, location: str) -> str:
    with pytest.raises(ImageError) as err:
        local.read(location)
    return err.value.category


def test_inside_the_tables_folder_and_given_roots_only(layout):
    table, shared, private = layout
    local = LocalFiles((str(table), str(shared)), base_dir=str(table))
    assert local.read("in.png") == local.read(str(table / "in.png")) == local.read(f"file://{table}/in.png")
    assert local.read("alias.png") == local.read("in.png")  # a link that stays inside
    assert local.read(str(shared / "s.png"))
    assert category(local, str(private / "secret.png")) == REFUSED
    assert category(local, "../private/secret.png") == REFUSED
    assert category(local, "escape.png") == REFUSED  # a link that leaves the root
    assert category(local, "/etc/passwd") == REFUSED
    assert category(local, f"file://otherhost{table}/in.png") == REFUSED


def test_no_fifo_device_or_oversized_file_is_read(layout):
    table, _, _ = layout
    os.mkfifo(table / "pipe.png")
    local = LocalFiles((str(table), "/dev"), base_dir=str(table), max_bytes=20)
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(category(local, "pipe.png")), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert result == [REFUSED]  # refused at once, not blocked waiting for a writer
    assert category(local, "/dev/zero") == REFUSED
    assert category(local, "in.png") == "too_large"  # an 8x8 PNG is more than 20 bytes


def test_a_remote_table_reads_no_local_file_unless_a_root_is_given(layout):
    table, shared, _ = layout
    assert category(LocalFiles(()), str(table / "in.png")) == REFUSED
    given = LocalFiles((str(shared),))
    assert given.read("s.png") and category(given, str(table / "in.png")) == REFUSED


def test_refusals_are_counted_row_failures(layout):
    table, _, private = layout
    rows = pa.table({"url": ["in.png", str(private / "secret.png"), "escape.png"], "caption": [b"a", b"b", b"c"]})
    cfg = IngestConfig(image=ImageConfig(image_size=8), fetch=FetchConfig(max_bytes=10_000))
    content = build_image_text_shard(rows, 0, cfg, str(table))
    assert len(list(content.samples)) == 1
    assert content.stats()["errors"] == {REFUSED: 2}
