"""``tvp ingest imagefolder`` as a user runs it, against the session's Ray head: a small tree in S3 (the session's
moto server) with a held-out fraction, then one shard lost and the command run again (the same set comes back);
bad trees end in one line with exit status 2, before Ray starts, and leave nothing behind."""

from __future__ import annotations

import json

from components.data.shards.shard_store import ShardStore
from pipelines.cli import main
from pipelines.inspect_shards import _caption, inspect_shards
from tests.components.test_image_folder import TREE, picture, write_tree
from tests.components.test_output_lease import worker_visible
from tests.conftest import create_bucket, run_tvp


def test_a_tree_in_s3_becomes_train_and_heldout_sets_and_a_lost_shard_is_remade_as_it_was(
        ray_address, s3_env, tmp_path):
    create_bucket(s3_env, "imagefolder")
    root = worker_visible(s3_env, "imagefolder/tree")  # endpoint and keys in the URI, for the head's workers
    files = {**TREE, **{f"dog/{i}.png": picture(10, 10, shade=i) for i in range(8)},
             **{f"black cat/{i}.jpg": picture(9, 11, "JPEG", shade=i) for i in range(8)}}
    write_tree(ShardStore(root), files)
    out = tmp_path / "out"
    command = ["ingest", "imagefolder", root, "--output", str(out), "--heldout-fraction", "0.25", "--seed", "3",
               "--image-size", "16", "--images-per-shard", "4", "--processes", "2"]
    first = run_tvp(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"train:   15 images in 4 shards: {out}/train" in first.stdout
    assert f"heldout: 5 images in 2 shards: {out}/heldout" in first.stdout
    assert "skipped: decode 1, not_image 1" in first.stdout
    assert "2 classes: black cat, dog" in first.stdout
    assert "note: 1 files directly in s3://" in first.stdout  # README.md
    train = json.loads((out / "train" / "manifest.json").read_text())
    heldout = json.loads((out / "heldout" / "manifest.json").read_text())
    assert train["classes"] == heldout["classes"] == {"0": "black cat", "1": "dog"}
    assert train["num_input_rows"] + heldout["num_input_rows"] == 22

    (out / "train" / "00001_stats.json").unlink()
    (out / "train" / "00001.tar").unlink()
    second = run_tvp(*command)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train: 16 files in 4 shards; 1 to do" in second.stdout
    assert "heldout: 6 files in 2 shards; 0 to do" in second.stdout
    assert json.loads((out / "train" / "manifest.json").read_text())["content_hash"] == train["content_hash"]

    # tvp inspect captions each picture with its class, named by the manifest.
    sheet = inspect_shards(out / "train", tmp_path / "sheet.jpg", samples=4, echo=lambda line: None)
    assert sheet["contact_sheet"] == str(tmp_path / "sheet.jpg")
    assert {_caption({"cls": b"1"}, {"1": "dog"}), _caption({"cls": b"7"}, {})} == {"dog (class 1)", "7 (class 7)"}


def test_bad_trees_end_in_one_line_and_leave_nothing(tmp_path, capsys):
    write_tree(ShardStore(tmp_path / "tree"), {"cat/a.png": picture(4, 4), "dog/b.png": picture(4, 4)})
    write_tree(ShardStore(tmp_path / "held"), {"wolf/w.png": picture(4, 4)})
    cases = [([str(tmp_path / "missing")], "does not exist"),
             ([str(tmp_path / "tree"), "--heldout-root", str(tmp_path / "held")], "lacks: 'wolf'"),
             ([str(tmp_path / "tree"), "--sample"], "either a ROOT or --sample")]
    for arguments, message in cases:  # in this process, since each fails before Ray starts: the address is unused
        assert main(["ingest", "imagefolder", *arguments, "--output", str(tmp_path / "out"),
                     "--address", "127.0.0.1:9"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("tvp:")]
        assert len(errors) == 1 and errors[0].startswith("tvp: error: ") and message in errors[0], err
        assert "Traceback" not in err and not (tmp_path / "out").exists()
