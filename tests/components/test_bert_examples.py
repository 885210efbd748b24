import numpy as np
import pytest

from components.data.loading.bert_examples import (
    IGNORE, ExampleConfig, most_frequent_accuracy, pretraining_batch, tokenize_documents, truncation_amounts,
    unigram_counts, unigram_entropy,
)
from components.data.loading.wordpiece import SpecialIds, special_ids, train_wordpiece

IDS = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)
FIRST = 5  # the first ordinary id


def corpus(n_docs: int, seed: int = 0) -> tuple[list[list[list[int]]], int]:
    """Documents of 1..30 sentences of 1..25 tokens; every token id is unique and rises through the corpus,
    so an id says which document it came from and where."""
    rng = np.random.default_rng(seed)
    docs, next_id = [], FIRST
    for _ in range(n_docs):
        doc = []
        for _ in range(int(rng.integers(1, 31))):
            size = int(rng.integers(1, 26))
            doc.append(list(range(next_id, next_id + size)))
            next_id += size
        docs.append(doc)
    return docs, next_id


def rngs_for(n: int, epoch: int = 0, seed: int = 7) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, epoch, i]) for i in range(n)]


def build(docs, vocab, cfg=ExampleConfig(), epoch=0, batch=8, continuation=None):
    """Every document through batches of ``batch``; the columns concatenated, with each row's document."""
    parts, owner = [], []
    for start in range(0, len(docs) - batch + 1, batch):
        rngs = [np.random.default_rng([7, epoch, start + k]) for k in range(batch)]
        parts.append(pretraining_batch(docs[start:start + batch], rngs, cfg, IDS, vocab, continuation))
        owner += [start + k for k in range(batch) for _ in range(cfg.examples_per_document)]
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return out, np.array(owner)


def originals(out):
    return np.where(out["mlm_labels"] != IGNORE, out["mlm_labels"], out["input_ids"])


def segments(row_tokens, row_types, row_mask):
    tokens = row_tokens[row_mask == 1]
    seps = np.flatnonzero(tokens == IDS.sep)
    return tokens[1:seps[0]], tokens[seps[0] + 1:seps[1]], seps


@pytest.fixture(scope="module")
def many():
    docs, vocab = corpus(200)
    return docs, vocab, *build(docs, vocab, ExampleConfig(max_seq_length=64, examples_per_document=5))


def test_shapes_types_and_layout(many):
    docs, vocab, out, owner = many
    m = len(owner)
    assert m == 1000
    for key in ("input_ids", "token_type_ids", "attention_mask", "mlm_labels"):
        assert out[key].shape == (m, 64) and out[key].dtype == np.int64
    assert out["nsp_label"].shape == (m,) and out["nsp_label"].dtype == np.int64
    tokens = originals(out)
    for r in range(m):
        n = int(out["attention_mask"][r].sum())
        assert 5 <= n <= 64 and (out["attention_mask"][r, :n] == 1).all() and (out["attention_mask"][r, n:] == 0).all()
        assert (out["input_ids"][r, n:] == IDS.pad).all() and (out["token_type_ids"][r, n:] == 0).all()
        a, b, seps = segments(tokens[r], out["token_type_ids"][r], out["attention_mask"][r])
        assert tokens[r, 0] == IDS.cls and list(seps) == [len(a) + 1, n - 1] and len(a) >= 1 and len(b) >= 1
        assert (out["token_type_ids"][r, :len(a) + 2] == 0).all() and (out["token_type_ids"][r, len(a) + 2:n] == 1).all()
        assert not np.isin(np.r_[a, b], IDS.as_array()).any()


def test_segments_come_from_the_right_documents(many):
    docs, vocab, out, owner = many
    tokens = originals(out)
    bounds = [(d[0][0], d[-1][-1]) for d in docs]
    for r in range(len(owner)):
        a, b, _ = segments(tokens[r], out["token_type_ids"][r], out["attention_mask"][r])
        lo, hi = bounds[owner[r]]
        assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()  # contiguous runs of their documents
        assert lo <= a[0] and a[-1] <= hi
        if out["nsp_label"][r] == 0:
            assert lo <= b[0] and b[-1] <= hi and b[0] > a[-1]  # B continues A in the same document
            if int(out["attention_mask"][r].sum()) < 64 - 1:  # nothing truncated: B starts where A ends
                assert b[0] == a[-1] + 1
        else:
            assert not (lo <= b[0] <= hi)  # B from another document


def test_next_sentence_labels_are_balanced(many):
    _, _, out, _ = many
    assert 0.45 < out["nsp_label"].mean() < 0.58  # a bit above half: one-sentence chunks always take a random B


def test_one_sentence_documents_take_a_random_b(many):
    docs, _, out, owner = many
    single = np.array([len(docs[o]) == 1 for o in owner])
    assert single.any() and (out["nsp_label"][single] == 1).all()


def test_masking_rate_and_the_80_10_10_split(many):
    _, vocab, out, _ = many
    predicted = out["mlm_labels"] != IGNORE
    lengths = out["attention_mask"].sum(1)
    expected = np.minimum(20, np.maximum(1, np.round(lengths * 0.15)))
    assert (predicted.sum(1) == expected).all()
    assert 0.14 < predicted.sum() / lengths.sum() < 0.16
    shown, label = out["input_ids"][predicted], out["mlm_labels"][predicted]
    masked, kept = (shown == IDS.mask).mean(), (shown == label).mean()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.12 and 0.08 < 1 - masked - kept < 0.12
    random = shown[(shown != IDS.mask) & (shown != label)]
    assert random.min() >= FIRST and random.max() < vocab  # random replacements are never special tokens
    assert (out["input_ids"][~predicted & (out["attention_mask"] == 1)] ==
            originals(out)[~predicted & (out["attention_mask"] == 1)]).all()


def test_special_tokens_are_never_predicted(many):
    _, _, out, _ = many
    tokens = originals(out)
    predicted = out["mlm_labels"] != IGNORE
    assert not np.isin(tokens[predicted], IDS.as_array()).any()
    assert (out["attention_mask"][predicted] == 1).all()


def test_whole_word_masking_masks_whole_words():
    docs, vocab = corpus(64, seed=3)
    continuation = np.random.default_rng(0).random(vocab) < 0.5
    continuation[:FIRST] = False
    out, _ = build(docs, vocab, ExampleConfig(max_seq_length=64, whole_word_mask=True, examples_per_document=4),
                   continuation=continuation)
    tokens, predicted = originals(out), out["mlm_labels"] != IGNORE
    joined = continuation[tokens[:, 1:]] & ~np.isin(tokens[:, :-1], IDS.as_array()) & (out["attention_mask"][:, 1:] == 1)
    assert joined.sum() > 1000
    assert (predicted[:, 1:][joined] == predicted[:, :-1][joined]).all()  # a ## piece goes with the piece before it
    assert (predicted.sum(1) <= 20).all() and 0.12 < predicted.sum() / out["attention_mask"].sum() < 0.16
    with pytest.raises(ValueError, match="continuation"):
        build(docs, vocab, ExampleConfig(whole_word_mask=True))


def test_same_generators_give_the_same_examples_and_another_epoch_other_masks():
    docs, vocab = corpus(8)
    cfg = ExampleConfig(max_seq_length=48, examples_per_document=2)
    first = pretraining_batch(docs, rngs_for(8), cfg, IDS, vocab)
    again = pretraining_batch(docs, rngs_for(8), cfg, IDS, vocab)
    later = pretraining_batch(docs, rngs_for(8, epoch=1), cfg, IDS, vocab)
    for key in first:
        assert (first[key] == again[key]).all()
    assert not (first["mlm_labels"] == later["mlm_labels"]).all()
    assert not (first["input_ids"] == later["input_ids"]).all()


def test_a_document_s_next_segment_examples_do_not_depend_on_the_rest_of_the_batch():
    docs, vocab = corpus(16)
    cfg = ExampleConfig(max_seq_length=48, examples_per_document=4)
    alone = pretraining_batch(docs[:8], rngs_for(8), cfg, IDS, vocab)
    other = [docs[0], *docs[8:15]]  # document 0 first again, with other company
    together = pretraining_batch(other, [np.random.default_rng([7, 0, 0]), *rngs_for(7, seed=99)], cfg, IDS, vocab)
    rows = np.flatnonzero(alone["nsp_label"][:4] == 0)
    assert rows.size and (together["nsp_label"][:4] == alone["nsp_label"][:4]).all()
    for key in ("input_ids", "token_type_ids", "attention_mask", "mlm_labels"):
        assert (together[key][rows] == alone[key][rows]).all()


def test_labels_give_back_the_original_tokens():
    docs, vocab = corpus(8)
    out = pretraining_batch(docs, rngs_for(8), ExampleConfig(max_seq_length=32), IDS, vocab)
    predicted = out["mlm_labels"] != IGNORE
    restored = np.where(predicted, out["mlm_labels"], out["input_ids"])
    for r in range(8):
        a, b, _ = segments(restored[r], out["token_type_ids"][r], out["attention_mask"][r])
        assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()  # the runs of unique ids, unbroken


def test_short_and_tiny_inputs_still_give_valid_examples():
    docs = [[[FIRST]], [[FIRST + 1, FIRST + 2]], [[FIRST + 3], [FIRST + 4]]]
    out = pretraining_batch(docs, rngs_for(3), ExampleConfig(max_seq_length=8, examples_per_document=3), IDS, 16)
    assert out["input_ids"].shape == (9, 8)
    assert (out["attention_mask"].sum(1) >= 5).all() and ((out["mlm_labels"] != IGNORE).sum(1) == 1).all()


def test_errors_are_clear():
    docs, vocab = corpus(2)
    with pytest.raises(ValueError, match="at least 2"):
        pretraining_batch(docs[:1], rngs_for(1), ExampleConfig(), IDS, vocab)
    with pytest.raises(ValueError, match="document 1 .* no tokens"):
        pretraining_batch([docs[0], [[]]], rngs_for(2), ExampleConfig(), IDS, vocab)
    with pytest.raises(ValueError, match="max_seq_length"):
        ExampleConfig(max_seq_length=7)
    with pytest.raises(ValueError, match="mask_prob"):
        ExampleConfig(mask_prob=0)


def test_truncation_takes_from_the_longer_segment_one_token_at_a_time():
    for la, lb, limit in [(10, 3, 8), (3, 10, 8), (6, 6, 8), (7, 6, 8), (1, 200, 5), (4, 4, 125), (50, 51, 5)]:
        a, b = la, lb
        while a + b > limit:
            if a > b:
                a -= 1
            else:
                b -= 1
        assert truncation_amounts(la, lb, limit) == (la - a, lb - b)


def test_tokenize_documents_with_a_trained_vocabulary_keeps_sentences_apart():
    texts = ["The cat sat on the mat.", "A dog barked.", "", "Cats and dogs."]
    tokenizer = train_wordpiece(texts * 20, vocab_size=120)
    docs = tokenize_documents(tokenizer, [texts[:2], texts[2:], []])
    assert len(docs) == 3 and len(docs[0]) == 2 and len(docs[1]) == 1 and docs[2] == []
    assert tokenizer.decode(docs[0][1]) == "a dog barked."
    ids = special_ids(tokenizer)
    out = pretraining_batch(docs[:2], rngs_for(2), ExampleConfig(max_seq_length=16), ids, tokenizer.get_vocab_size())
    assert out["input_ids"].shape == (2, 16) and (out["input_ids"][:, 0] == ids.cls).all()


def test_unigram_baselines():
    counts = unigram_counts([[[5, 5, 6]], [[5, 7]]], vocab_size=9)
    assert counts.tolist() == [0, 0, 0, 0, 0, 3, 1, 1, 0]
    assert most_frequent_accuracy(counts, np.array([5, 6, 5, 8])) == 0.5
    assert unigram_entropy(counts, np.array([5]), smoothing=0.0) == pytest.approx(-np.log(3 / 5))
    smoothed = unigram_entropy(counts, np.array([8]))  # never seen: finite with add-one counts
    assert smoothed == pytest.approx(-np.log(1 / 14))
