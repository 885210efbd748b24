"""``tvp filter clip-score``: a registered tiny CLIP scores the embedded digits' image-text pairs in a Ray Data
actor pool, and the pairs that pass become a new shard set.

Real Ray (the session's head), a real MLflow SQLite registry, real ingestion: the CLIP is registered with the
code ``tvp train`` registers with (a pyfunc package logged to a run, then a version). One CLI run; the rest
runs in this process.
"""

from __future__ import annotations

import io
import json
import math
import socket

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from components.data.filtering.clip_score import ClipScorer, DeviceModel, ScoreRule, keep_threshold, sample_metadata
from components.data.filtering.clip_score_stage import filter_shard_set
from components.data.ingest.digits_demo_data import build_digits_tables
from components.data.ingest.image_processing import ImageConfig
from components.data.ingest.image_text_shard import IngestConfig
from components.data.ingest.image_text_stage import shard_image_text_table
from components.data.ingest.url_table import TableSpec
from components.data.loading.image_batches import images_to_array
from components.data.loading.tokenizer import train_caption_tokenizer
from components.data.shards.shard_reader import ShardSetError, iter_samples, read_manifest
from components.data.shards.shard_writer import finalize_shard_set, write_shard
from components.models.vit import ViTConfig
from components.tasks.clip import TOKENIZER_FILE, ClipTask, ClipTaskConfig
from components.tasks.registry import load_task_and_model
from components.tasks.vit import VitTask, VitTaskConfig
from components.tracking.model_package import log_model_package
from components.tracking.registry import register_logged_model
from components.training.checkpoint import save_checkpoint_state
from pipelines.cli import main
from pipelines.filter_clip_score import load_scoring_model, open_image_text_set
from tests.components.test_transformer_blocks import tiny_clip_config
from tests.conftest import run_tvp


def _register(client: MlflowClient, run_id: str, task, folder, name: str, aliases=()) -> None:
    """As ``run_steps.register_step``: a pyfunc package around a folder named ``checkpoint``, then a version."""
    torch.manual_seed(0)
    save_checkpoint_state(folder, task.build_model().state_dict(), task.name, task.config_dict(), task.files)
    logged = log_model_package(client, run_id, folder, task.inference_inputs, task.inference_example)
    register_logged_model(client, name, logged.model_id, run_id, aliases=aliases)


@pytest.fixture(scope="module")
def setup(ray_address, tmp_path_factory):
    """90 ingested digit pairs in 4 shards; a registry with a tiny CLIP (tvp-clip, alias champion) and a ViT."""
    root = tmp_path_factory.mktemp("clip_filter")
    tables = build_digits_tables(root / "source", source_size=32, heldout_fraction=0.05, seed=0)
    pairs = root / "pairs"
    shard_image_text_table(TableSpec(str(tables.heldout)), pairs, IngestConfig(image=ImageConfig(image_size=16)),
                           rows_per_shard=25, processes=2)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    run_id = client.create_run(client.create_experiment("filter", str(root / "artifacts"))).info.run_id
    captions = [s["txt"].decode() for s in iter_samples(pairs, ["txt"])]
    tokenizer = train_caption_tokenizer(captions, vocab_size=300)
    config = tiny_clip_config()
    config.text.vocab_size, config.text.context_length = tokenizer.get_vocab_size(), 16
    clip = ClipTask(ClipTaskConfig(model=config), {TOKENIZER_FILE: tokenizer.to_str()})
    _register(client, run_id, clip, root / "clip" / "checkpoint", "tvp-clip", aliases=("champion",))
    vit = VitTask(VitTaskConfig(model=ViTConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2),
                                labels=["even", "odd"]))
    _register(client, run_id, vit, root / "vit" / "checkpoint", "tvp-vit")
    client.set_terminated(run_id)
    return {"root": root, "pairs": pairs, "uri": uri, "checkpoint": root / "clip" / "checkpoint",
            "ray_address": ray_address}


@pytest.fixture(scope="module")
def top30(setup, tmp_path_factory):
    """The one CLI run: the top 30 % by CLIP score."""
    out = tmp_path_factory.mktemp("top30") / "set"
    result = run_tvp("filter", "clip-score", str(setup["pairs"]), "--model", "models:/tvp-clip@champion",
                     "--keep-fraction", "0.3", "--output", str(out), "--workdir", str(setup["root"] / "work"),
                     "--actors", "1", "--batch-size", "16",
                     env={"MLFLOW_TRACKING_URI": setup["uri"], "RAY_ADDRESS": setup["ray_address"]})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return out, result


def _status(location) -> dict[str, tuple[float | None, str]]:
    """Every input sample's score and status, from the filtered set's status tables."""
    rows = {}
    for table in sorted(location.glob("*.parquet")):
        for row in pq.read_table(table).to_pylist():
            rows[row["key"]] = (row["score"], row["status"])
    return rows


def _direct_scores(checkpoint, samples: list[dict]) -> np.ndarray:
    """Cosine of the model's own image and text embeddings, without the task's predict or the stage."""
    task, model = load_task_and_model(checkpoint)
    pictures = [s["jpg"] for s in samples]
    # The task's deterministic image transform where it has one, else the plain decode-and-normalise it wraps.
    pixels = (task.images(pictures) if hasattr(task, "images")
              else images_to_array(pictures, task.config.model.vision.image_size))
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(pixels))
        text = model.encode_text(torch.from_numpy(task.tokenize([s["txt"].decode() for s in samples])))
    return torch.nn.functional.cosine_similarity(image, text).numpy()


def test_cli_keeps_the_top_fraction_with_scores_in_json_and_lineage_in_the_manifest(setup, top30):
    out, result = top30
    source = read_manifest(setup["pairs"])
    manifest = json.loads((out / "manifest.json").read_text())
    facts = manifest["clip_score"]
    n = source["num_samples"]
    assert n == 90 and facts["scored"] == n and facts["unscored"] == {}
    assert facts["kept"] == manifest["num_samples"] == math.ceil(0.3 * n) == 27  # scores of a float model do not tie
    assert facts["kept_fraction"] == pytest.approx(27 / 90) and facts["keep_fraction"] == 0.3
    assert facts["input"]["content_hash"] == source["content_hash"] == manifest["source"]["input"]["content_hash"]
    assert facts["model"]["uri"] == "models:/tvp-clip@champion"
    assert (facts["model"]["name"], facts["model"]["version"]) == ("tvp-clip", "1")
    assert manifest["num_input_rows"] == n and manifest["errors"] == {"below_threshold": n - 27}
    assert manifest.get("classes") == source.get("classes")  # a classification set stays one
    assert "kept 27 of 90 scored pairs (30.0%)" in result.stdout and "scored shards 4/4" in result.stdout

    inputs = {s["__key__"]: s for s in iter_samples(setup["pairs"])}
    kept = {s["__key__"]: s for s in iter_samples(out)}
    assert set(kept) < set(inputs)
    status = _status(out)
    assert set(status) == set(inputs)  # every input pair is accounted for, with its score
    threshold = facts["threshold"]
    for key, (score, outcome) in status.items():
        assert outcome == ("kept" if key in kept else "below_threshold")
        assert (score >= threshold) == (key in kept)
    assert threshold == keep_threshold(np.array([s for s, _ in status.values()], dtype=np.float32), 0.3)
    for key, sample in kept.items():
        meta, original = json.loads(sample["json"]), json.loads(inputs[key]["json"])
        assert meta == {**original, "clip_score": meta["clip_score"]}  # the score added, every other field kept
        assert meta["clip_score"] == status[key][0]
        assert sample["jpg"] == inputs[key]["jpg"] and sample["txt"] == inputs[key]["txt"]

    some = [inputs[k] for k in sorted(inputs)[::9]]  # kept and dropped alike
    direct = _direct_scores(setup["checkpoint"], some)
    np.testing.assert_allclose([status[s["__key__"]][0] for s in some], direct, atol=1e-5)

    # The per-batch function alone, on the model behind the accelerator adapter (on the CPU here), with pairs
    # that cannot be scored among good ones.
    task, model = load_task_and_model(setup["checkpoint"])
    bad = [{"jpg": b"not a picture", "txt": b"a seven"}, {"jpg": some[0]["jpg"]},
           {"jpg": some[0]["jpg"], "txt": b"\xff"}, {"jpg": some[0]["jpg"], "txt": b"a one", "json": b"[1]"}]
    batch = [*some[:3], *bad]
    columns = {c: np.array([s.get(c) for s in batch], dtype=object) for c in ("jpg", "txt", "json")}
    scored = ClipScorer(task, DeviceModel(model, torch.device("cpu"))).score_batch(columns)
    np.testing.assert_allclose(scored["score"][:3], direct[:3], atol=1e-5)
    assert np.isnan(scored["score"][3:]).all()
    assert list(scored["reason"]) == ["", "", "", "decode", "missing_member", "invalid_caption", "invalid_json"]
    assert not (out / "_scores").exists() and not (out / "_inputs").exists()


class Stop(Exception):
    pass


def test_min_score_resumes_after_interruptions_without_scoring_twice(setup, top30, tmp_path):
    shard_set = open_image_text_set(str(setup["pairs"]))
    model = load_scoring_model("models:/tvp-clip/1", setup["uri"])
    scores = {k: s for k, (s, _) in _status(top30[0]).items()}
    rule = ScoreRule(min_score=float(np.median(list(scores.values()))))
    out = tmp_path / "above_median"
    run = dict(shard_set=shard_set, model=model, out_dir=out, rule=rule, actors=1, batch_size=16, processes=1)

    def stop_scoring(done, total, pairs):
        if done == 1:
            raise Stop

    with pytest.raises(Stop):  # interrupted while scoring: one shard scored, nothing written
        filter_shard_set(**run, on_scored=stop_scoring)
    scored = sorted(p.name for p in (out / "_scores").iterdir())
    assert len(scored) == 2 and scored[1] == "FINGERPRINT" and scored[0].endswith(".parquet")
    assert not list(out.glob("0*"))

    to_score: list[int] = []

    def stop_writing(stats, done, total):
        if done == 2:
            raise Stop

    with pytest.raises(Stop):  # the other three scored, then interrupted after writing two shards
        filter_shard_set(**run, on_scored=lambda done, total, pairs: to_score.append(total),
                         on_shard_done=stop_writing)
    assert to_score[0] == 3 and len(list(out.glob("*_stats.json"))) == 2 and not (out / "manifest.json").exists()

    to_score.clear()
    planned: list[tuple[int, int, int]] = []
    manifest = filter_shard_set(**run, on_scored=lambda done, total, pairs: to_score.append(total),
                                on_planned=lambda *counts: planned.append(counts))
    assert to_score == [0] and planned == [(4, 2, 4)]  # nothing scored again, only missing shards written
    facts = manifest["clip_score"]
    assert facts["min_score"] == facts["threshold"] == rule.min_score and "keep_fraction" not in facts
    status = _status(out)
    kept = {k for k, (_, outcome) in status.items() if outcome == "kept"}
    assert {s["__key__"] for s in iter_samples(out)} == kept
    assert facts["kept"] == len(kept) == manifest["num_samples"] == 45 and facts["kept_fraction"] == 0.5
    for key, (score, _) in status.items():  # the same model scores the same pairs alike in another process
        assert score == pytest.approx(scores[key], abs=1e-5) and (score >= rule.min_score) == (key in kept)
    assert not (out / "_scores").exists() and not (out / "_inputs").exists()

    assert filter_shard_set(**run) == manifest  # finished: the same set, nothing redone
    by_alias = load_scoring_model("models:/tvp-clip@champion", setup["uri"])  # the same version, spelled otherwise
    assert filter_shard_set(**{**run, "model": by_alias}) == manifest
    with pytest.raises(ShardSetError, match="another input, model or rule"):
        filter_shard_set(**{**run, "rule": ScoreRule(keep_fraction=0.5)})
    with pytest.raises(ShardSetError, match="is the input set itself"):
        filter_shard_set(**{**run, "out_dir": setup["pairs"]})


def test_the_threshold_rule_and_metadata_edge_cases():
    scores = np.array([0.1, 0.5, np.nan, 0.3, 0.3, 0.9], dtype=np.float32)
    assert keep_threshold(scores, 1.0) == pytest.approx(0.1)  # all finite scores kept; NaN never
    assert keep_threshold(scores, 0.2) == pytest.approx(0.9)  # ceil(0.2 * 5) = 1
    assert keep_threshold(scores, 0.6) == pytest.approx(0.3)  # k = 3: the tie at 0.3 keeps 4
    assert keep_threshold(np.arange(10, dtype=np.float32), 0.3) == 7.0  # 0.3 * 10 is 3, not 4
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
            ScoreRule(keep_fraction=bad)
    assert sample_metadata(None) == {} and sample_metadata(b"[1]") is None
    assert sample_metadata(b'{"a": NaN}') == {"a": None}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_models_inputs_and_services_end_in_one_line(setup, tmp_path, capsys, monkeypatch):
    captions_only = tmp_path / "no_images"
    captions_only.mkdir()
    write_shard(captions_only, 0, [{"__key__": "000000000", "txt": "a handwritten one", "cls": "1"}],
                {"input_rows": 1})
    finalize_shard_set(captions_only, {"made": "here"}, {})
    (tmp_path / "not_a_set").mkdir()
    (tmp_path / "not_a_set" / "notes.txt").write_text("hello")
    pairs, work, out = str(setup["pairs"]), str(tmp_path / "work"), tmp_path / "out"
    cases = [
        ({}, [pairs, "--model", "models:/no-such-clip/1", "--min-score", "0.2"], "names no registered version"),
        ({}, [pairs, "--model", "models:/tvp-vit/1", "--min-score", "0.2"], "is a vit model, not a CLIP"),
        ({}, [pairs, "--model", "models:/tvp-clip/1", "--keep-fraction", "0"], "--keep-fraction must lie in (0, 1]"),
        ({}, [pairs, "--model", "models:/tvp-clip/1", "--keep-fraction", "1.5"], "must lie in (0, 1]"),
        ({}, [str(tmp_path / "not_a_set"), "--model", "models:/tvp-clip/1", "--min-score", "0.2"],
         "is not a shard set"),
        ({}, [str(captions_only), "--model", "models:/tvp-clip/1", "--min-score", "0.2"],
         "is not an image-text set: its samples have .cls, .txt but no .jpg"),
        ({"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_closed_port()}"},
         [pairs, "--model", "models:/tvp-clip/1", "--min-score", "0.2"], "is unreachable"),
        ({"MLFLOW_TRACKING_URI": None}, [pairs, "--model", "models:/tvp-clip/1", "--min-score", "0.2"],
         "no MLflow store at"),
    ]
    for env, arguments, message in cases:  # each fails before Ray is asked for anything
        monkeypatch.setenv("MLFLOW_TRACKING_URI", setup["uri"])
        for name, value in env.items():
            if value is None:
                monkeypatch.delenv(name)
            else:
                monkeypatch.setenv(name, value)
        assert main(["filter", "clip-score", *arguments, "--output", str(out), "--workdir", work]) == 2, message
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("tvp:")]
        assert len(errors) == 1 and errors[0].startswith("tvp: error: ") and message in errors[0], err
        assert "Traceback" not in err and not out.exists()
