"""CLIP evaluation building blocks: retrieval recall, linear probe, zero-shot accuracy, the predictions picture."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from components.evaluation.linear_probe import linear_probe, probe_split, stratified_split
from components.evaluation.retrieval import retrieval_metrics, retrieval_ranks
from components.evaluation.zero_shot import (DEFAULT_TEMPLATES, zero_shot_accuracy, zero_shot_classifier,
                                             zero_shot_top_predictions)
from components.viz import top_predictions
from components.viz.top_predictions import top_predictions_picture


def _brute_force(images: np.ndarray, texts: np.ndarray, owner: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall by hand: sort each query's candidates by (score desc, index asc) and walk the list."""
    sim = images @ texts.T
    i2t, t2i = {k: [] for k in ks}, {k: [] for k in ks}
    for i in range(len(images)):
        captions = {t for t in range(len(texts)) if owner[t] == i}
        if not captions:
            continue
        order = sorted(range(len(texts)), key=lambda t: (-sim[i, t], t))
        for k in ks:
            i2t[k].append(any(t in captions for t in order[:k]))
    for t in range(len(texts)):
        order = sorted(range(len(images)), key=lambda i: (-sim[i, t], i))
        for k in ks:
            t2i[k].append(owner[t] in order[:k])
    out = {f"image_to_text_R{k}": float(np.mean(i2t[k])) for k in ks}
    out.update({f"text_to_image_R{k}": float(np.mean(t2i[k])) for k in ks})
    return out


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "many-ties"])
def test_retrieval_matches_brute_force_with_several_captions_and_ties(integer):
    rng = np.random.default_rng(3)
    n_img, dim = 37, 6
    owner = np.concatenate([rng.permutation(n_img)[:33], rng.integers(0, n_img, 60)])  # 4 images without captions
    if integer:  # entries in {-1, 0, 1}: exact dot products, ties everywhere; duplicated rows too
        images = rng.integers(-1, 2, (n_img, dim)).astype(np.float64)
        texts = rng.integers(-1, 2, (len(owner), dim)).astype(np.float64)
        images[5] = images[9]
        texts[7] = texts[8] = texts[20]
    else:
        images = rng.normal(size=(n_img, dim))
        texts = images[owner] + 0.9 * rng.normal(size=(len(owner), dim))
        images /= np.linalg.norm(images, axis=1, keepdims=True)
        texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    expected = _brute_force(images, texts, owner)
    for chunk in (1, 7, 1000):  # chunking never changes the answer
        got = retrieval_metrics(images, torch.from_numpy(texts), owner, chunk_size=chunk)
        assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert got["retrieval_mean_recall"] == pytest.approx(np.mean(list(expected.values())))
    assert got["num_retrieval_images"] == len(set(owner.tolist())) and got["num_retrieval_texts"] == len(owner)


def test_retrieval_small_known_cases():
    # Two images, three captions: captions 0, 1 of image 0, caption 2 of image 1.
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # caption 2 points at image 0: a miss at 1
    image_ranks, text_ranks = retrieval_ranks(images, texts, [0, 0, 1])
    # image 0: captions by (score desc, index asc) = 1, 2, 0 → its best own caption (1) ranks 0
    # image 1: order 0, then 1, 2 (tied at 0, by index) → its caption 2 ranks 2
    assert image_ranks.tolist() == [0, 2]
    # caption 0 → image 1 first (rank 1 for image 0); caption 1 → image 0 first; caption 2 → image 1 ranks 1
    assert text_ranks.tolist() == [1, 0, 1]
    m = retrieval_metrics(images, texts, [0, 0, 1], ks=(1, 2))
    assert m["image_to_text_R1"] == 0.5 and m["image_to_text_R2"] == 0.5
    assert m["text_to_image_R1"] == pytest.approx(1 / 3) and m["text_to_image_R2"] == 1.0
    # An exact tie goes to the lower index: identical images, each with one caption equal to both.
    ranks = retrieval_ranks(np.ones((2, 3)), np.ones((2, 3)), [0, 1])
    assert ranks[0].tolist() == [0, 1] and ranks[1].tolist() == [0, 1]
    with pytest.raises(ValueError, match="text_to_image"):
        retrieval_ranks(images, texts, [0, 0, 2])


def _blobs(n_per_class: int, classes: int, dim: int, seed: int, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    labels = np.repeat(np.arange(classes), n_per_class)
    features = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return features.astype(np.float32), labels


def test_linear_probe_separable_and_deterministic():
    x, y = _blobs(40, 4, 16, seed=0)
    x_train, y_train, x_test, y_test = probe_split(x, y, seed=1)
    assert len(y_test) == 80 and all(np.bincount(y_test) == 20)  # stratified halves
    first = linear_probe(x_train, y_train, x_test, y_test)
    assert first.top1 == 1.0 and first.mean_per_class_top1 == 1.0 and set(first.per_class_top1) == {0, 1, 2, 3}
    assert first.validation_top1 == 1.0 and first.num_train == 80 and first.num_test == 80
    second = linear_probe(torch.from_numpy(x_train), torch.from_numpy(y_train), x_test, y_test)
    assert second == first
    fixed = linear_probe(x_train, y_train, x_test, y_test, C=1.0)
    assert fixed.top1 == 1.0 and fixed.C == 1.0 and fixed.validation_top1 is None
    assert set(first.metrics()) >= {"linear_probe_top1", "linear_probe_C", "linear_probe_validation_top1"}


def test_linear_probe_chooses_regularisation_on_noisy_features():
    # Few samples, many noise dimensions: the validation search must not pick the weakest regularisation blindly.
    x, y = _blobs(30, 3, 64, seed=5, spread=2.5)
    x_train, y_train, x_test, y_test = probe_split(x, y, seed=0)
    chosen = linear_probe(x_train, y_train, x_test, y_test, grid=(1e-3, 1e-1, 10.0, 1e3))
    assert chosen.C in (1e-3, 1e-1, 10.0, 1e3) and 0.0 <= chosen.validation_top1 <= 1.0
    assert chosen.top1 > 1 / 3 + 0.2  # well above chance
    assert linear_probe(x_train, y_train, x_test, y_test, grid=(1e-3, 1e-1, 10.0, 1e3)) == chosen


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 1 + [3] * 10)
    rest, held = stratified_split(labels, 0.5, seed=4)
    assert sorted(np.concatenate([rest, held]).tolist()) == list(range(len(labels)))
    assert set(labels[held]) == {0, 1, 3} and set(labels[rest]) == {0, 1, 2, 3}
    assert np.array_equal(held, stratified_split(labels, 0.5, seed=4)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.5, seed=5)[1])


def test_zero_shot_accuracy_by_hand():
    classifier = torch.eye(3)  # class rows 0, 1, 2
    images = torch.tensor([[0.9, 0.1, 0.0],   # → 0, then 1, then 2
                           [0.2, 0.1, 0.7],   # → 2, then 0, then 1
                           [0.5, 0.5, 0.0],   # tie 0 / 1: row 0 first, then 1
                           [0.1, 0.3, 0.2]])  # → 1, then 2, then 0
    labels = [0, 0, 1, 0]  # ranks 0, 1, 1, 2
    got = zero_shot_accuracy(images, classifier, labels, ks=(1, 2, 5))
    assert got == {"zero_shot_top1": 0.25, "zero_shot_top2": 0.75, "zero_shot_top5": 1.0}
    # Labels as class ids through the rows' ids (the task's sorted manifest ids); an unknown id never hits.
    by_id = zero_shot_accuracy(images.numpy(), classifier.numpy(), [10, 10, 20, 99], class_ids=[10, 20, 30], ks=(1, 5))
    assert by_id == {"zero_shot_top1": 0.25, "zero_shot_top5": 0.75}
    rows, probabilities = zero_shot_top_predictions(images, classifier, k=2, logit_scale=1.0)
    assert rows.tolist() == [[0, 1], [2, 0], [0, 1], [1, 2]]
    assert probabilities[2, 0] == pytest.approx(probabilities[2, 1])
    full = torch.softmax(images @ classifier.T, dim=-1)
    assert probabilities[1].tolist() == pytest.approx([full[1, 2].item(), full[1, 0].item()])


def test_zero_shot_classifier_ensembles_normalised_prompts():
    assert 8 <= len(DEFAULT_TEMPLATES) <= 18 and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)
    vocab = {"cat": [3.0, 0.0], "dog": [0.0, 1.0]}
    seen = []

    def tokenize(prompts):
        seen.extend(prompts)
        return np.array([[i] for i, _ in enumerate(prompts)])

    def encode_text(tokens):  # unnormalised: the name's direction plus a per-prompt length
        return torch.tensor([vocab[p.split()[-1].rstrip(".")] for p in seen[-len(tokens):]]) * (1 + tokens)

    classifier = zero_shot_classifier(encode_text, tokenize, ["cat", "dog"], ["a {}.", "two {}."])
    assert torch.allclose(classifier, torch.eye(2)) and seen[:2] == ["a cat.", "two cat."]


def test_top_predictions_picture_size_and_marks():
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)),
                rng.integers(0, 255, (80, 30, 3), dtype=np.uint8), b"not an image", None]
    buffer = io.BytesIO()
    pictures[0].save(buffer, "JPEG")
    pictures[3] = buffer.getvalue()
    names = ["apple", "bus", "cat", "dog", "eel"]
    top = np.array([[0, 1, 2], [3, 2, 1], [4, 0, 1], [1, 0, 4]])
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.1], [0.9, 0.05, 0.01], [0.4, 0.35, 0.2]])
    sheet = top_predictions_picture(pictures, top, probs, names, labels=[0, 2, 3, 1], columns=3)
    cell_w = top_predictions.TILE + top_predictions.PANEL
    cell_h = top_predictions.TILE + top_predictions.CAPTION_H
    assert sheet.size == (3 * cell_w + top_predictions.MARGIN, 2 * cell_h + top_predictions.MARGIN)
    pixels = np.asarray(sheet)
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert top_predictions.TRUE in colours and top_predictions.WRONG in colours and top_predictions.OTHER in colours
    one = top_predictions_picture(pictures[:1], top[:1], probs[:1], dict(enumerate(names)))
    assert one.size == (cell_w + top_predictions.MARGIN, cell_h + top_predictions.MARGIN)
