"""``tvp ingest coco`` as a user runs it, against the session's Ray head: the hostile set of the component tests,
annotation file and images in S3 (the session's moto server), then one shard lost and the command run again (the
same set comes back); malformed files and wrong arguments end in one line with exit status 2, before Ray starts,
and leave nothing behind."""

from __future__ import annotations

import json

from components.data.shards.shard_store import ShardStore
from pipelines.cli import main
from tests.components.test_coco_ingest import INSTANCES, write_set
from tests.components.test_output_lease import worker_visible
from tests.conftest import create_bucket, run_tvp


def test_a_set_in_s3_is_ingested_with_every_problem_counted_and_a_lost_shard_is_remade_as_it_was(
        ray_address, s3_env, tmp_path):
    create_bucket(s3_env, "coco")
    # Endpoint and keys in the URI, for the head's workers (started before moto) and this command alike.
    annotations, images = write_set("coco/set", lambda path: worker_visible(s3_env, path))
    out = tmp_path / "out"
    command = ["ingest", "coco", annotations, "--images", images, "--output", str(out), "--images-per-shard", "2",
               "--processes", "2"]
    first = run_tvp(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"coco: 3 images, 4 boxes in 4 shards: {out}" in first.stdout
    assert "images skipped: bad_path 1, decode 1, missing_image 1, size_mismatch 1; kept without boxes: 1" \
        in first.stdout
    assert ("annotations: 12 in the file, 5 kept (1 crowd, 2 clipped_box), 1 lost with skipped images; dropped: "
            "degenerate_box 2, outside_box 2, unknown_image 2, unknown_category 1") in first.stdout
    assert "2 categories (id name): 1 cat, 3 dog" in first.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {"1": "cat", "3": "dog"} and manifest["num_samples"] == 3
    assert manifest["errors"] == {"bad_path": 1, "decode": 1, "missing_image": 1, "size_mismatch": 1}
    assert manifest["annotations"]["dropped"]["unknown_category"] == 1

    (out / "00001_stats.json").unlink()
    (out / "00001.tar").unlink()
    second = run_tvp(*command)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "coco: 7 files in 4 shards; 1 to do" in second.stdout
    assert json.loads((out / "manifest.json").read_text())["content_hash"] == manifest["content_hash"]


def test_malformed_files_and_wrong_arguments_end_in_one_line_and_leave_nothing(tmp_path, capsys):
    annotations, images = write_set(str(tmp_path / "set"))
    (tmp_path / "bad.json").write_text(json.dumps({**INSTANCES, "images": [{"id": 1}]}))
    cases = [([str(tmp_path / "bad.json"), "--images", images], "bad.json: images[0] has file_name None"),
             ([str(tmp_path / "missing.json"), "--images", images], "missing.json does not exist"),
             ([annotations, "--images", str(tmp_path / "no-images")], "no-images does not exist"),
             ([annotations], "give --images DIR"),
             (["--sample", "--images", images], "not with --sample"),
             ([annotations, "--images", images, "--max-size", "-1"], "--max-size must be 0"),
             ([], "either an ANNOTATIONS file or --sample")]
    for arguments, message in cases:  # in this process, since each fails before Ray starts: the address is unused
        assert main(["ingest", "coco", *arguments, "--output", str(tmp_path / "out"), "--address", "127.0.0.1:9"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("tvp:")]
        assert len(errors) == 1 and errors[0].startswith("tvp: error: ") and message in errors[0], err
        assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert ShardStore(tmp_path / "set").exists("instances.json")
