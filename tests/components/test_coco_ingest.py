"""COCO ingestion without Ray: a hostile instances file (every problem counted exactly once under its category),
box clipping and scaling, the shard builder's samples read back with webdataset, one-line refusals of malformed
files, a set in S3 (the session's moto server), and the embedded digit scenes."""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from components.data.ingest.coco_annotations import CocoError, clip_box, open_coco, parse_coco, read_coco
from components.data.ingest.coco_shard import CocoConfig, CocoShardBuilder, stored_size
from components.data.ingest.coco_stage import coco_manifest_extra
from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import write_shard
from components.errors import TvpError
from tests.components.test_image_folder import picture, write_tree
from tests.conftest import create_bucket

IMAGES = [
    {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
    {"id": 2, "file_name": "sub/b.jpg", "width": 20, "height": 20},
    {"id": 3, "file_name": "missing.png", "width": 10, "height": 10},
    {"id": 4, "file_name": "broken.jpg", "width": 16, "height": 16},
    {"id": 5, "file_name": "empty.png", "width": 12, "height": 12},  # no annotations: kept, no boxes
    {"id": 6, "file_name": "wrong_size.png", "width": 10, "height": 10},  # the file is 20x10
    {"id": 7, "file_name": "../escape.png", "width": 10, "height": 10},
]
FILES = {"a.png": picture(40, 30), "sub/b.jpg": picture(20, 20, "JPEG"), "broken.jpg": picture(16, 16, "JPEG")[:150],
         "empty.png": picture(12, 12), "wrong_size.png": picture(20, 10)}


def annotation(id: int, image_id: int, category_id: int, bbox: list[float], **extra) -> dict:
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "segmentation": [], **extra}


ANNOTATIONS = [
    annotation(1, 1, 1, [1, 2, 10, 5]),  # kept as it is
    annotation(2, 1, 3, [35, 25, 10, 10]),  # past the bottom-right corner: clipped to [35, 25, 5, 5]
    annotation(3, 1, 1, [-5, -5, 10, 10]),  # before the top-left corner: clipped to [0, 0, 5, 5]
    annotation(4, 1, 1, [40, 0, 5, 5]),  # touches the right edge from outside: no shared area
    annotation(5, 1, 1, [50, 50, 5, 5]),  # wholly outside
    annotation(6, 1, 1, [3, 3, 0, 5]),  # zero width
    annotation(7, 1, 1, [3, 3, 5, -1]),  # negative height
    annotation(8, 99, 1, [1, 1, 2, 2]),  # no image 99
    annotation(9, 1, 2, [1, 1, 2, 2]),  # no category 2
    annotation(10, 2, 3, [0, 0, 20, 20], iscrowd=1, area=123.0),  # a crowd: kept, flagged, COCO's area kept
    annotation(11, 3, 1, [1, 1, 4, 4]),  # kept, but its image file is missing
    annotation(12, 99, 2, [0, 0, 0, 0]),  # counted under its first problem only
]
CATEGORIES = [{"id": 3, "name": "dog", "supercategory": "animal"}, {"id": 1, "name": "cat", "supercategory": "animal"}]
INSTANCES = {"info": {}, "images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}


def write_set(location: str, locate: Callable[[str], str] = str) -> tuple[str, str]:
    """The hostile set at ``location`` (a folder or bucket/path): (annotation file, images folder), each a path
    or URI made by ``locate``."""
    annotations, images = locate(f"{location}/instances.json"), locate(f"{location}/images")
    write_tree(ShardStore(images), FILES)
    ShardStore(locate(location)).write_bytes("instances.json", json.dumps(INSTANCES).encode())
    return annotations, images


def build(annotations: str, images: str, cfg: CocoConfig = CocoConfig(max_size=0, threads=2), first_row: int = 0):
    reader = open_coco(annotations, images)
    return CocoShardBuilder(reader.images_root, cfg)(next(iter(reader.read(100))), first_row)


def test_every_annotation_problem_is_counted_once_under_its_first_category():
    coco = parse_coco(INSTANCES)
    assert coco.counts == {"in_file": 12, "kept": 5, "crowd": 1, "clipped_box": 2,
                           "dropped": {"unknown_image": 2, "unknown_category": 1, "degenerate_box": 2,
                                       "outside_box": 2}}
    assert [a["bbox"] for a in coco.boxes[1]] == [[1, 2, 10, 5], [35, 25, 5, 5], [0, 0, 5, 5]]
    assert coco.boxes[2] == [{"id": 10, "category_id": 3, "bbox": [0, 0, 20, 20], "area": 123.0, "iscrowd": 1}]
    assert coco.boxes[1][1]["area"] == 25  # no area in the file: the clipped box's
    assert 5 not in coco.boxes and coco.images_without_annotations == 4  # 5 has none; 4, 6, 7 none kept
    extra = coco_manifest_extra(coco)
    assert extra["classes"] == {"1": "cat", "3": "dog"}  # COCO's ids as they are
    assert extra["categories"] == [{"id": 1, "name": "cat", "supercategory": "animal"},
                                   {"id": 3, "name": "dog", "supercategory": "animal"}]


@pytest.mark.parametrize("bbox, expected", [
    ([2, 3, 4, 5], ([2, 3, 4, 5], None)),
    ([0, 0, 10, 8], ([0, 0, 10, 8], None)),  # the whole image
    ([8.5, 6, 4, 4], ([8.5, 6.0, 1.5, 2.0], "clipped_box")),
    ([-2.5, 1, 5, 2], ([0.0, 1.0, 2.5, 2.0], "clipped_box")),
    ([-5, -5, 20, 20], ([0.0, 0.0, 10.0, 8.0], "clipped_box")),
    ([-3, 2, 3, 2], (None, "outside_box")),  # touching the left edge from outside
    ([2, 8, 3, 2], (None, "outside_box")),  # touching the bottom edge
    ([0, 0, 0, 0], (None, "degenerate_box")),
    ([50, 50, -1, 2], (None, "degenerate_box")),  # degenerate is judged before outside
])
def test_clipping_arithmetic_on_a_10_by_8_image(bbox, expected):
    assert clip_box(bbox, 10, 8) == expected


def test_a_shard_holds_jpg_and_json_samples_keeps_crowds_and_empty_images_and_counts_what_it_skips(tmp_path):
    content = build(*write_set(str(tmp_path / "set")), first_row=100)
    (tmp_path / "out").mkdir()
    stats = write_shard(tmp_path / "out", 0, content.samples, content.stats, content.rows)
    assert stats["input_rows"] == 7 and stats["successes"] == stats["count"] == 3
    assert stats["errors"] == {"bad_path": 1, "decode": 1, "missing_image": 1, "size_mismatch": 1}
    assert stats["boxes"] == 4 and stats["boxes_of_skipped_images"] == 1 and stats["samples_without_boxes"] == 1

    samples = list(wds.WebDataset(str(tmp_path / "out" / "00000.tar"), shardshuffle=False).decode("pil"))
    by_id = {s["json"]["image_id"]: s for s in samples}
    assert sorted(by_id) == [1, 2, 5] and by_id[1]["__key__"] == "000000100" and by_id[5]["__key__"] == "000000104"
    assert by_id[1]["json"] == {
        "image_id": 1, "file_name": "a.png", "width": 40, "height": 30, "original_width": 40, "original_height": 30,
        "boxes": [[1, 2, 10, 5], [35, 25, 5, 5], [0, 0, 5, 5]], "category_ids": [1, 3, 1], "iscrowd": [0, 0, 0],
        "areas": [50, 25, 25], "annotation_ids": [1, 2, 3]}
    assert by_id[1]["jpg"].size == (40, 30)
    assert by_id[2]["json"]["iscrowd"] == [1] and by_id[2]["json"]["areas"] == [123.0]
    assert {k: by_id[5]["json"][k] for k in ("boxes", "category_ids", "iscrowd", "areas", "annotation_ids")} == {
        "boxes": [], "category_ids": [], "iscrowd": [], "areas": [], "annotation_ids": []}

    status = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    failed = {row["file_name"]: (row["error_category"], row["boxes"]) for row in status if row["status"] == "failed"}
    assert failed == {"missing.png": ("missing_image", 1), "broken.jpg": ("decode", 0),
                      "wrong_size.png": ("size_mismatch", 0), "../escape.png": ("bad_path", 0)}


def test_a_picture_larger_than_max_size_is_scaled_down_with_its_boxes_and_a_smaller_one_is_not_enlarged(tmp_path):
    assert stored_size(40, 30, 20) == (20, 15) and stored_size(12, 12, 20) == (12, 12)
    assert stored_size(4000, 3000, 0) == (4000, 3000)
    content = build(*write_set(str(tmp_path / "set")), CocoConfig(max_size=20, threads=1))
    by_id = {s["json"]["image_id"]: s for s in content.samples}
    meta = by_id[1]["json"]
    assert (meta["width"], meta["height"], meta["original_width"], meta["original_height"]) == (20, 15, 40, 30)
    assert meta["boxes"] == [[0.5, 1.0, 5.0, 2.5], [17.5, 12.5, 2.5, 2.5], [0.0, 0.0, 2.5, 2.5]]
    assert meta["areas"] == [12.5, 6.25, 6.25]  # scaled by both factors
    assert (by_id[5]["json"]["width"], by_id[2]["json"]["width"]) == (12, 20)


@pytest.mark.parametrize("text, message", [
    ("{\"images\": [", "is not JSON: "),
    ("[1, 2]", "holds a JSON list, not an object"),
    (json.dumps({"categories": CATEGORIES}), "no 'images' list"),
    (json.dumps({"images": IMAGES}), "no 'categories' list"),
    (json.dumps({**INSTANCES, "categories": []}), "'categories' is empty"),
    (json.dumps({**INSTANCES, "images": IMAGES + IMAGES[:1]}), "images[7] repeats image id 1"),
    (json.dumps({**INSTANCES, "images": [{"id": 1, "file_name": "a.png", "width": 0, "height": 3}]}),
     "images[0] has 'width' 0: expected a positive integer"),
    (json.dumps({**INSTANCES, "annotations": [{"id": 1, "image_id": 1, "category_id": 1}]}),
     "annotations[0] has bbox None: expected [x, y, width, height]"),
    (json.dumps({**INSTANCES, "annotations": [annotation(1, 1, 1, [1, 2, "3", 4])]}),
     "annotations[0]'s bbox value is '3': expected a finite number"),
    (json.dumps({**INSTANCES, "annotations": {"id": 1}}), "'annotations' is a dict, not a list"),
])
def test_a_malformed_file_is_refused_in_one_line_naming_the_entry(tmp_path, text, message):
    (tmp_path / "instances.json").write_text(text)
    with pytest.raises(CocoError) as caught:
        read_coco(str(tmp_path / "instances.json"))
    assert isinstance(caught.value, TvpError) and message in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1 and str(caught.value).startswith(str(tmp_path))


def test_a_missing_file_is_refused_and_an_image_info_file_without_annotations_is_read(tmp_path):
    with pytest.raises(CocoError, match="does not exist"):
        read_coco(str(tmp_path / "nothing.json"))
    (tmp_path / "test-dev.json").write_text(json.dumps({"images": IMAGES, "categories": CATEGORIES}))
    coco = read_coco(str(tmp_path / "test-dev.json"))
    assert coco.counts["in_file"] == 0 and coco.images_without_annotations == 7


def test_a_set_in_object_storage_is_read_like_a_local_one(s3_env, monkeypatch, tmp_path):
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    create_bucket(s3_env, "coco-set")
    remote, local = build(*write_set("s3://coco-set/v1")), build(*write_set(str(tmp_path / "set")))
    remote_samples, local_samples = list(remote.samples), list(local.samples)
    assert remote_samples == local_samples and len(remote_samples) == 3
    assert remote.stats()["errors"] == local.stats()["errors"]


def test_the_digit_scenes_are_seeded_inside_their_canvas_and_held_out_digits_stay_held_out(tmp_path):
    from components.data.ingest.digit_scenes import SceneSpec, digit_pools, digit_scenes, write_digit_scenes

    spec = SceneSpec(train_scenes=30, val_scenes=10)
    files = dict(digit_scenes(spec))
    assert files == dict(digit_scenes(spec))  # the same bytes every time
    assert files != dict(digit_scenes(SceneSpec(train_scenes=30, val_scenes=10, seed=1)))
    train, val = (json.loads(files[f"instances_{split}.json"]) for split in ("train", "val"))
    assert [c["id"] for c in train["categories"]] == list(range(1, 11)) and train["categories"][0]["name"] == "zero"
    assert [i["id"] for i in train["images"]] == list(range(1, 31)) and val["images"][0]["id"] == 31
    pools = digit_pools(1797, spec.seed)
    assert {a["digit_index"] for a in val["annotations"]} <= set(pools["val"].tolist())
    assert {a["digit_index"] for a in train["annotations"]} <= set(pools["train"].tolist())
    for document in (train, val):
        per_image = np.bincount([a["image_id"] for a in document["annotations"]])
        assert set(per_image[per_image > 0]) <= {1, 2, 3, 4}
        assert all(0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= spec.canvas and y + h <= spec.canvas
                   for x, y, w, h in (a["bbox"] for a in document["annotations"]))
        coco = parse_coco(document)
        assert coco.counts["kept"] == len(document["annotations"]) and not any(coco.counts["dropped"].values())
        assert coco.counts["clipped_box"] == 0

    root = write_digit_scenes(str(tmp_path / "scenes"), spec)
    content = build(f"{root}/instances_val.json", f"{root}/images")
    samples = list(content.samples)
    assert len(samples) == 10 and content.stats()["errors"] == {}
    assert samples[0]["json"]["boxes"] == [a["bbox"] for a in val["annotations"] if a["image_id"] == 31]
    first = tmp_path / "scenes" / "images" / "000001.png"
    before = first.stat().st_mtime_ns
    write_digit_scenes(str(tmp_path / "scenes"), spec)
    assert first.stat().st_mtime_ns == before  # whole already (its marker says so): not written again
