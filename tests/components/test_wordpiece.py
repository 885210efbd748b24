import os

import numpy as np
import pytest

from components.data.loading.wordpiece import (
    SPECIAL_TOKENS, continuation_mask, special_ids, train_wordpiece, vocab_txt, wordpiece_from_vocab,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "Café au lait is a coffee drink made with hot milk.",
    "The naïve student wrote a résumé in Zürich and Montréal.",
    "Anarchism is a political philosophy and movement.",
    "Autism is a developmental disorder characterised by difficulties with social interaction.",
] * 30

# BERT's layout: [PAD] 0, [unused0..98] 1..99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then the rest.
WORDS = ["the", "a", "is", "of", "and", "cafe", "café", "coffee", "drink", "milk", "hot", "naive", "resume",
         "zurich", "un", "##able", "##s", "##ing", "##ed", "play", "read", "token", "##izer", "##ization",
         "1", "2", "3", "##0", "##5", "19", "##99", "中", "国", "日", "本", "e", "##e", "x", "##x", "Café", "The",
         "Zürich", "Play", "##ly", "quick", "brown", "fox", "naïve"]
PUNCT = list(".,;:!?'\"()[]-–—/\\@#$%&*+=<>«»…")
BERT_VOCAB = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PUNCT, *WORDS]

TRICKY = [
    "The quick brown fox.",
    "Café, NAÏVE résumé; Zürich!",
    "  extra   whitespace\t\tand\nnewlines  ",
    "unplayable readings tokenizer tokenization",
    "1999 - 2005 (19,99) 3.5%",
    "中国 日本語 中文字",
    "zebra qwerty unknownword",
    "x" * 150,
    "x" * 100 + " " + "x" * 101,
    "«Quoted» — dash… [brackets] e-mail@host.com #tag",
    "control\u0000char\u200bzero-width and\u00a0nbsp",
    "",
]


@pytest.fixture(scope="module")
def trained():
    return train_wordpiece(TEXTS, vocab_size=300)


def test_trained_vocabulary_has_specials_first_and_respects_its_size(trained):
    assert [trained.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert 5 < trained.get_vocab_size() <= 300
    ids = special_ids(trained)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 1, 2, 3, 4)
    with pytest.raises(ValueError, match="vocab_size"):
        train_wordpiece(TEXTS, vocab_size=5)


def test_trained_vocabulary_is_uncased_and_strips_accents(trained):
    assert trained.normalizer.normalize_str("Café NAÏVE") == "cafe naive"
    assert trained.encode("Café").tokens == ["[CLS]", "cafe", "[SEP]"]
    assert "é" not in "".join(trained.get_vocab())


def test_cased_vocabulary_keeps_case_and_accents():
    cased = train_wordpiece(TEXTS, vocab_size=300, lowercase=False)
    assert cased.normalizer.normalize_str("Café") == "Café"


def test_vocab_txt_round_trips_to_identical_ids(trained):
    text = vocab_txt(trained)
    assert text.endswith("\n") and text.split("\n")[:5] == list(SPECIAL_TOKENS)
    again = wordpiece_from_vocab(text)
    assert vocab_txt(again) == text
    for sample in [*TEXTS[:4], *TRICKY]:
        assert again.encode(sample).ids == trained.encode(sample).ids
    pair = again.encode("Café au lait", "hot milk")
    assert pair.ids == trained.encode("Café au lait", "hot milk").ids


def test_continuation_mask_marks_word_pieces(trained):
    mask = continuation_mask(trained)
    assert mask.shape == (trained.get_vocab_size(),)
    for token, index in trained.get_vocab().items():
        assert mask[index] == token.startswith("##")
    assert mask.any() and not mask[:5].any()


def test_a_vocabulary_without_the_specials_is_refused_with_a_hint():
    with pytest.raises(ValueError, match=r"\[MASK\].*not its path"):
        wordpiece_from_vocab("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n")
    with pytest.raises(ValueError, match="twice"):
        wordpiece_from_vocab("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nthe\n")


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert_vocab")
    (folder / "vocab.txt").write_text("".join(f"{t}\n" for t in BERT_VOCAB), encoding="utf-8")
    return folder


@pytest.mark.parametrize("lowercase", [True, False])
def test_a_given_vocab_tokenizes_like_transformers(vocab_dir, lowercase):
    transformers = pytest.importorskip("transformers")
    # transformers 5's BertTokenizerFast(vocab_file=...) ignores the file; from_pretrained reads vocab.txt.
    reference = transformers.BertTokenizerFast.from_pretrained(str(vocab_dir), do_lower_case=lowercase)
    ours = wordpiece_from_vocab((vocab_dir / "vocab.txt").read_text(encoding="utf-8"), lowercase=lowercase)
    ids = special_ids(ours)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 100, 101, 102, 103)
    assert ours.get_vocab_size() == len(reference) == len(BERT_VOCAB)
    for text in TRICKY:
        assert ours.encode(text).ids == reference(text)["input_ids"], text
    unknown = ours.encode("zebra " + "x" * 150).ids
    assert unknown[1:-1] == [100, 100]  # an unknown word and an over-long word are [UNK]
    texts = [t for t in TRICKY if t]  # transformers reads an empty second text as no pair at all
    for first, second in zip(texts, reversed(texts)):
        expected = reference(first, second)
        encoding = ours.encode(first, second)
        assert encoding.ids == expected["input_ids"], (first, second)
        assert encoding.type_ids == expected["token_type_ids"], (first, second)
    batch = ours.encode_batch(TRICKY, add_special_tokens=False)
    assert [e.ids for e in batch] == [reference(t, add_special_tokens=False)["input_ids"] for t in TRICKY]


def test_a_given_vocab_tokenizes_like_bert_original_python_tokenizer(vocab_dir):
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    reference = legacy.BertTokenizerLegacy(vocab_file=str(vocab_dir / "vocab.txt"), do_lower_case=True)
    ours = wordpiece_from_vocab((vocab_dir / "vocab.txt").read_text(encoding="utf-8"))
    for text in TRICKY:
        assert ours.encode(text).ids == reference(text)["input_ids"], text


def test_vocab_txt_of_a_given_vocab_is_the_file_itself(vocab_dir):
    text = (vocab_dir / "vocab.txt").read_text(encoding="utf-8")
    assert vocab_txt(wordpiece_from_vocab(text)) == text
    assert np.flatnonzero(continuation_mask(wordpiece_from_vocab(text))).size == sum(
        t.startswith("##") for t in BERT_VOCAB)
