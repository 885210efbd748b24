"""The CLIP task's evaluation (zero-shot top-1/top-5, retrieval, linear probe, from whichever members the held-out
set carries), its augmentation (seeded per sample) and its tokenizers (trained, OpenAI's, and the caption
tokenizer of versions registered before them)."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from components.data.loading.image_augment import AugmentConfig
from components.data.loading.tokenizer import encode_captions, train_caption_tokenizer
from components.evaluation.batch_evaluation import evaluate, sample_batches
from components.tasks.clip import TOKENIZER_FILE, CaptionAugmentConfig, ClipTask, ClipTaskConfig, augment_caption
from components.tasks.task import EvalFacts
from components.training.checkpoint import CheckpointError
from tests.components.test_transformer_blocks import tiny_clip_config

NAMES = {0: "red", 1: "green", 2: "blue", 3: "black", 4: "white", 5: "grey"}
COLOURS = {0: (220, 30, 30), 1: (30, 200, 30), 2: (30, 30, 220), 3: (10, 10, 10), 4: (245, 245, 245),
           5: (128, 128, 128)}


def _png(colour: tuple[int, int, int], shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), tuple(min(255, c + shade) for c in colour)).save(out, format="PNG")
    return out.getvalue()


def samples(n: int = 36) -> list[dict[str, bytes]]:
    """Flat colour squares (six classes, six shades each) captioned with their colour name."""
    return [{"jpg": _png(COLOURS[i % 6], 3 * (i // 6)), "txt": f"a {NAMES[i % 6]} square".encode(),
             "json": json.dumps({"label": i % 6}).encode()} for i in range(n)]


def task(**settings) -> ClipTask:
    model = asdict(tiny_clip_config())
    model["text"]["vocab_size"] = 600
    clip = ClipTask.from_dict({"model": model, **settings})
    return clip.with_files(clip.prepare_assets(samples()))


def test_every_evaluation_from_the_members_it_needs():
    clip = task(evaluation=["zero_shot", "retrieval", "linear_probe"])
    assert clip.eval_columns == ("jpg", "json", "txt")
    model = clip.build_model().eval()
    facts = EvalFacts(classes=NAMES)
    metrics = evaluate(clip, model, sample_batches(clip, samples(), 8), facts)
    assert {"zero_shot_top1", "zero_shot_top5", "image_to_text_R1", "text_to_image_R10", "retrieval_mean_recall",
            "linear_probe_top1"} <= set(metrics)
    assert metrics["num_eval_samples"] == 36 and metrics["num_classes"] == 6
    assert 0 <= metrics["zero_shot_top1"] <= metrics["zero_shot_top5"] <= 1
    # Flat colours are linearly separable whatever the random towers make of them.
    assert metrics["linear_probe_top1"] >= 0.8

    only_pairs = task(evaluation=["retrieval"])
    assert only_pairs.eval_columns == ("jpg", "txt")
    pairs = [{"jpg": s["jpg"], "txt": s["txt"]} for s in samples()]
    metrics = evaluate(only_pairs, model, sample_batches(only_pairs, pairs, 8), EvalFacts())
    assert "image_to_text_R5" in metrics and "zero_shot_top1" not in metrics
    with pytest.raises(CheckpointError, match="class names"):
        clip.eval_begin(model, EvalFacts())


def test_zero_shot_top1_is_the_rank_of_the_true_class():
    clip = task(evaluation=["zero_shot"])
    model = clip.build_model().eval()
    facts = EvalFacts(classes=NAMES)
    batch = {k: torch.from_numpy(v) for k, v in clip.eval_transform(
        {c: np.array([s[c] for s in samples()], dtype=object) for c in clip.eval_columns}).items()}
    context = clip.eval_begin(model, facts)
    scores = model.encode_image(batch["image"]) @ context["classifier"].T
    expected = float((context["class_ids"][scores.argmax(-1)] == batch["label"]).float().mean())
    out = {k: v.numpy() for k, v in clip.eval_step(model, batch, context).items()}
    assert clip.eval_reduce(out, facts)["zero_shot_top1"] == pytest.approx(expected)


def test_augmentation_is_drawn_from_each_samples_generator():
    cfg = CaptionAugmentConfig(pick_line=True, word_dropout=0.3)
    text = "a red square on grey\nthe colour red\n\nsomething red"
    drawn = [augment_caption(text, np.random.default_rng([7, i]), cfg) for i in range(20)]
    assert drawn == [augment_caption(text, np.random.default_rng([7, i]), cfg) for i in range(20)]
    assert len(set(drawn)) > 3 and all(d.strip() and "\n" not in d for d in drawn)
    assert augment_caption("one", np.random.default_rng(0), CaptionAugmentConfig(word_dropout=0.99)) == "one"

    clip = task(augment=asdict(AugmentConfig(image_size=99, scale=(0.5, 1.0), randaugment_ops=0, mixup_alpha=0,
                                             cutmix_alpha=0)), captions=asdict(cfg))
    assert clip.config.augment.image_size == 16  # always the model's
    ramp = np.broadcast_to(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], (24, 24, 3))
    pictures = []
    for shift in range(4):
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(np.roll(ramp, 5 * shift, axis=1))).save(out, format="PNG")
        pictures.append(out.getvalue())
    batch = {"jpg": np.array(pictures, dtype=object), "txt": np.array([b"a\nb c d"] * 4, dtype=object)}
    rngs = lambda: [np.random.default_rng([1, i]) for i in range(4)]  # noqa: E731
    first, second = clip.transform_batch(batch, rngs()), clip.transform_batch(batch, rngs())
    assert all(np.array_equal(first[k], second[k]) for k in first)
    assert first["image"].shape == (4, 3, 16, 16)
    plain = clip.transform_batch(batch, None)
    assert not np.array_equal(plain["image"], first["image"])


def test_openai_and_old_caption_tokenizers():
    ClipTaskConfig(tokenizer="openai")  # the default text tower's vocabulary is 49408: fine
    model = asdict(tiny_clip_config())
    with pytest.raises(ValueError, match="49408"):
        ClipTask.from_dict({"model": model, "tokenizer": "openai"})
    model["text"]["vocab_size"] = 49408
    openai = ClipTask.from_dict({"model": model, "tokenizer": "openai"})
    openai = openai.with_files(openai.prepare_assets([]))
    tokens = openai.tokenize(["a red square!"])
    assert tokens[0, 0] == 49406 and 49407 in tokens[0]

    # A version registered before the CLIP tokenizer: its caption tokenizer.json alone, encoding as it did.
    old = train_caption_tokenizer(["a red square", "a blue square"], vocab_size=300)
    clip = ClipTask.from_dict({"model": asdict(tiny_clip_config())}, {TOKENIZER_FILE: old.to_str()})
    captions = ["a red square", "a blue square"]
    assert np.array_equal(clip.tokenize(captions), encode_captions(old, captions, 8))


def test_open_clip_and_hugging_face_folders_round_trip_through_the_task(tmp_path):
    from components.models.clip import clip_config
    from components.models.clip_layouts import export_hf_folder

    cfg = clip_config("micro", vision=dict(layers=1), text=dict(layers=1, vocab_size=49408, context_length=16))
    clip = ClipTask.from_dict({"model": asdict(cfg), "tokenizer": "openai"})
    clip = clip.with_files(clip.prepare_assets([]))
    model = clip.build_model().eval()
    pictures = [s["jpg"] for s in samples(3)]
    expected = model.encode_image(torch.from_numpy(clip.images(pictures)))
    expected_text = model.encode_text(torch.from_numpy(clip.tokenize(["a red square", "blue!~ square"])))

    export_hf_folder(tmp_path / "hf", cfg, model.state_dict())
    for folder in (clip.export_pretrained(model.state_dict(), tmp_path / "open_clip"), tmp_path / "hf"):
        config, files, weights = ClipTask.import_pretrained(folder)
        imported = ClipTask.from_dict(config, files)
        again = imported.build_model().eval()
        again.load_state_dict(weights)
        assert torch.allclose(again.encode_image(torch.from_numpy(imported.images(pictures))), expected, atol=1e-6)
        tokens = imported.tokenize(["a red square", "blue!~ square"])
        assert torch.allclose(again.encode_text(torch.from_numpy(tokens)), expected_text, atol=1e-6)
    assert ClipTask.import_pretrained(tmp_path) is None  # neither layout
