"""Class-per-folder image trees without Ray: the listing and class map, the held-out split, and the shard builder's
samples (read back with webdataset) and counted failures; a tree in S3 (the session's moto server) alike."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from components.data.ingest.image_folder import (
    ImageFolderError, heldout_flags, list_image_folder, split_readers,
)
from components.data.ingest.image_folder_shard import ImageFolderConfig, ImageFolderShardBuilder
from components.data.ingest.image_processing import ImageConfig
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import write_shard
from tests.conftest import create_bucket


def picture(width: int, height: int, fmt: str = "PNG", shade: int = 0) -> bytes:
    pixels = (np.arange(width * height * 3).reshape(height, width, 3) + shade) % 256
    out = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(out, format=fmt)
    return out.getvalue()


TREE = {
    "black cat/b.png": picture(20, 10),
    "black cat/a.jpg": picture(12, 12, "JPEG"),
    "black cat/broken.jpg": picture(16, 16, "JPEG")[:200],  # cut short: corrupt
    "black cat/.DS_Store": b"hidden",
    "dog/puppies/tiny.png": picture(8, 6),  # nested: still a dog
    "dog/notes.txt": b"not an image",
    "dog/big.PNG": picture(30, 40),
    ".git/objects/x.png": picture(4, 4),  # a hidden folder is no class
    "README.md": b"directly in ROOT: in no class",
}


def write_tree(store: ShardStore, files: dict[str, bytes]) -> None:
    """``files`` (relative path → bytes) under ``store``'s root, a folder or object storage."""
    store.makedirs()
    for name, data in files.items():
        if "/" in name:
            store.makedirs(name.rsplit("/", 1)[0])
        with store.fs.open_output_stream(store.path(name)) as f:  # no fsync: a test's files need not survive a crash
            f.write(data)


@pytest.fixture
def tree(tmp_path):
    write_tree(ShardStore(tmp_path / "root"), TREE)
    (tmp_path / "root" / "empty class").mkdir()  # holds no file: no class
    return tmp_path / "root"


def test_classes_are_sorted_folders_with_files_and_every_file_below_a_class_folder_is_listed(tree):
    listed = list_image_folder(str(tree))
    assert listed.classes == ("black cat", "dog")
    assert listed.location == str(tree)
    assert listed.files == (
        ("black cat/a.jpg", 0, len(TREE["black cat/a.jpg"])),
        ("black cat/b.png", 0, len(TREE["black cat/b.png"])),
        ("black cat/broken.jpg", 0, 200),
        ("dog/big.PNG", 1, len(TREE["dog/big.PNG"])),
        ("dog/notes.txt", 1, len(b"not an image")),
        ("dog/puppies/tiny.png", 1, len(TREE["dog/puppies/tiny.png"])),
    )
    assert listed.files_outside_classes == 1


def build(listed, first_row=0):
    """The shard of all of ``listed``'s files, 16-px images."""
    builder = ImageFolderShardBuilder(listed.location, listed.classes,
                                      ImageFolderConfig(ImageConfig(image_size=16), threads=2))
    rows = next(iter(split_readers(listed)[0].read(100)))
    return builder(rows, first_row)


def test_a_shard_holds_jpg_cls_and_json_samples_and_counts_what_it_skips(tree, tmp_path):
    content = build(list_image_folder(str(tree)), first_row=1000)
    (tmp_path / "out").mkdir()
    stats = write_shard(tmp_path / "out", 0, content.samples, content.stats, content.rows)
    assert stats["input_rows"] == 6 and stats["successes"] == 4 and stats["count"] == 4
    assert stats["errors"] == {"decode": 1, "not_image": 1}

    samples = list(wds.WebDataset(str(tmp_path / "out" / "00000.tar"), shardshuffle=False).decode("pil"))
    rows = [f[0] for f in split_readers(list_image_folder(str(tree)))[0].files]  # the set's row order
    by_path = {s["json"]["path"]: s for s in samples}
    assert sorted(by_path) == ["black cat/a.jpg", "black cat/b.png", "dog/big.PNG", "dog/puppies/tiny.png"]
    assert all(s["__key__"] == f"{1000 + rows.index(path):09d}" for path, s in by_path.items())  # row position
    # webdataset reads .cls as the int it holds
    assert {path: s["cls"] for path, s in by_path.items()} == {"black cat/a.jpg": 0, "black cat/b.png": 0,
                                                               "dog/big.PNG": 1, "dog/puppies/tiny.png": 1}
    assert by_path["dog/big.PNG"]["json"] == {"path": "dog/big.PNG", "label": 1, "class": "dog", "width": 30,
                                              "height": 40}
    assert by_path["black cat/b.png"]["json"]["class"] == "black cat"
    assert all(s["jpg"].size == (16, 16) for s in samples)  # resized as image-text ingestion does (border)

    status = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    failed = {row["path"]: row["error_category"] for row in status if row["status"] == "failed"}
    assert failed == {"black cat/broken.jpg": "decode", "dog/notes.txt": "not_image"}


def test_the_held_out_split_is_seeded_stratified_and_the_same_every_time(tmp_path):
    files = {f"{cls}/{i:03d}.png": b"x" for cls in ("a", "b") for i in range(50)}
    files["c/only.png"] = b"x"
    write_tree(ShardStore(tmp_path / "root"), files)
    listed = list_image_folder(str(tmp_path / "root"))
    flags = heldout_flags(listed, 0.2, seed=1)
    assert flags == heldout_flags(list_image_folder(str(tmp_path / "root")), 0.2, seed=1)
    assert flags != heldout_flags(listed, 0.2, seed=2)
    per_class = {label: sum(f for f, (_, lab, _) in zip(flags, listed.files) if lab == label) for label in range(3)}
    assert per_class == {0: 10, 1: 10, 2: 0}  # a fifth of each class; a class of one stays in training

    train, heldout = split_readers(listed, fraction=0.2, seed=1)
    assert len(train.files) == 81 and len(heldout.files) == 20
    assert not {f[0] for f in train.files} & {f[0] for f in heldout.files}
    assert train.describe()["listing_sha256"] != heldout.describe()["listing_sha256"]
    assert train.describe()["split"] == "train" and heldout.describe()["fraction"] == 0.2
    # Rows interleave the classes (a shard in path order would hold one class), in an order fixed by the seed.
    assert {label for _, label, _ in train.files[:10]} == {0, 1}
    assert train.files == split_readers(list_image_folder(str(tmp_path / "root")), fraction=0.2, seed=1)[0].files


def test_a_held_out_tree_takes_the_training_classes_and_may_not_add_any(tree, tmp_path):
    training = list_image_folder(str(tree))
    write_tree(ShardStore(tmp_path / "held"), {"dog/d.png": TREE["dog/big.PNG"]})
    held = list_image_folder(str(tmp_path / "held"), classes=training.classes)
    assert held.files == (("dog/d.png", 1, len(TREE["dog/big.PNG"])),)  # dog is 1 as in training, not 0

    write_tree(ShardStore(tmp_path / "other"), {"dog/d.png": b"x", "wolf/w.png": b"x", "cow/c.png": b"x"})
    with pytest.raises(ImageFolderError, match="classes the training folder lacks: 'cow', 'wolf'"):
        list_image_folder(str(tmp_path / "other"), classes=training.classes)


@pytest.mark.parametrize("files, message", [
    (None, "does not exist"),
    ({}, "has no files"),
    ({"a.png": b"x"}, "has only files, no class folders"),
    ({"cat/notes.txt": b"x"}, "holds no image files"),
])
def test_a_tree_that_is_no_image_folder_is_refused_in_one_line(tmp_path, files, message):
    root = tmp_path / "root"
    if files is not None:
        write_tree(ShardStore(root), files)
    with pytest.raises(ImageFolderError, match=message):
        list_image_folder(str(root))
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(ImageFolderError, match="is not a folder"):
        list_image_folder(str(tmp_path / "file"))


def test_a_tree_in_object_storage_is_listed_and_read_like_a_local_one(s3_env, monkeypatch, tmp_path):
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    create_bucket(s3_env, "image-tree")
    write_tree(ShardStore("s3://image-tree/photos"), TREE)
    listed = list_image_folder("s3://image-tree/photos/")
    write_tree(ShardStore(tmp_path / "root"), TREE)
    local = list_image_folder(str(tmp_path / "root"))
    assert listed.location == "s3://image-tree/photos"
    assert (listed.classes, listed.files, listed.files_outside_classes) == (
        local.classes, local.files, local.files_outside_classes)
    s3_samples = list(build(listed).samples)
    local_samples = list(build(local).samples)
    assert s3_samples == local_samples and len(s3_samples) == 4


def test_the_embedded_digits_tree_holds_every_digit_in_its_class_folder_and_is_written_once(tmp_path):
    from components.data.ingest.digits_demo_data import CLASS_NAMES
    from components.data.ingest.digits_image_folder import write_digits_folder

    root = write_digits_folder(str(tmp_path / "digits"), source_size=16)
    listed = list_image_folder(root)
    assert listed.classes == tuple(sorted(CLASS_NAMES)) and len(listed.files) == 1797
    assert sum(label == listed.classes.index("zero") for _, label, _ in listed.files) == 178
    assert listed.files[0][0] == "eight/0008.png"
    first = tmp_path / "digits" / "zero" / "0000.png"
    assert Image.open(first).size == (16, 16)
    before = first.stat().st_mtime_ns
    write_digits_folder(str(tmp_path / "digits"), source_size=16)
    assert first.stat().st_mtime_ns == before  # whole already (its marker says so): not written again
