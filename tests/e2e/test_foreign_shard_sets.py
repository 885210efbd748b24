"""`tvp inspect` on shard sets tvp did not write (img2dataset's layout) and on sets in S3. No Ray."""

import json

from PIL import Image

from components.data.shards.shard_store import ShardStore
from components.data.shards.shard_writer import finalize_shard_set, write_shard
from pipelines.cli import main
from tests.conftest import create_bucket, run_tvp
from tests.img2dataset_layout import write_img2dataset_set, write_img2dataset_shard


def test_inspect_an_img2dataset_folder_before_and_after_indexing(tmp_path, capsys):
    data, work = tmp_path / "cc3m", tmp_path / "work"
    write_img2dataset_set(data, (6, 5, 7))
    write_img2dataset_shard(data, 3, 4, stats=False)  # still downloading

    assert main(["inspect", str(data), "--workdir", str(work)]) == 0
    before = capsys.readouterr().out
    assert "3 shards (img2dataset layout, not indexed yet" in before
    assert "15 samples from 18 input rows (83.3% succeeded)" in before and "failed_to_download" in before
    assert "left out as incomplete (no _stats.json): 00003.tar" in before
    assert not (data / "manifest.json").exists()

    assert main(["inspect", str(data), "--index", "--workdir", str(work)]) == 0
    after = capsys.readouterr().out
    assert "3 shards (img2dataset layout, indexed by tvp)" in after
    assert "15 samples from 18 input rows" in after and f"index: {data}" in after
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["indexed_by"] == "tvp" and manifest["incomplete_shards"] == ["00003.tar"]
    assert Image.open(data / "contact_sheet.jpg").width > 0

    assert main(["inspect", str(data), "--workdir", str(work)]) == 0  # the index is found from now on
    assert "indexed by tvp" in capsys.readouterr().out


def test_inspect_an_s3_set_tvp_wrote_and_a_foreign_one(tmp_path, s3_env, monkeypatch, capsys):
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    create_bucket(s3_env, "inspect")
    write_shard("s3://inspect/ours", 0, ({"__key__": f"{i:09d}", "txt": f"c{i}"} for i in range(3)), {"input_rows": 4})
    finalize_shard_set("s3://inspect/ours", {}, {})
    assert main(["inspect", "s3://inspect/ours", "--workdir", str(tmp_path)]) == 0
    assert "3 samples from 4 input rows" in capsys.readouterr().out

    write_img2dataset_set(tmp_path / "local", (4,))
    store = ShardStore("s3://inspect/theirs")
    for path in sorted((tmp_path / "local").iterdir()):
        store.write_bytes(path.name, path.read_bytes())
    assert main(["inspect", "s3://inspect/theirs", "--index", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 shards (img2dataset layout, indexed by tvp)" in out and "3 samples from 4 input rows" in out
    assert store.exists("manifest.json") and store.exists("contact_sheet.jpg")


def test_what_tvp_cannot_read_is_one_line_on_stderr(tmp_path):
    write_img2dataset_shard(tmp_path / "bare", 0, 3, stats=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "00000.tar").write_bytes(b"not a tar" * 50)
    for args, reason in [
        ((str(tmp_path / "bare"),), "no tvp manifest and no stats files: index it with `tvp inspect"),
        ((str(tmp_path / "junk"), "--index"), "00000.tar is not a readable tar"),
        ((str(tmp_path / "missing"),), "does not exist"),
    ]:
        result = run_tvp("inspect", *args, "--workdir", str(tmp_path / "work"), timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and reason in result.stderr, result.stderr
