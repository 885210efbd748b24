"""BERT's WordPiece vocabulary: trained on documents with HF tokenizers, or read from a released ``vocab.txt``.

The portable asset is ``vocab.txt`` (one token per line, the line number is
the id) plus the lowercase flag: released BERT checkpoints ship exactly that.
A tokenizer built here from a vocab text tokenizes to the same ids as
``transformers``' ``BertTokenizerFast`` loaded from the same file with the same
``do_lower_case``: the same normaliser (control characters dropped, whitespace
unified, spaces around CJK ideographs, lowercase, accents stripped when
lowercasing unless ``strip_accents`` says otherwise), the same pre-tokeniser
(whitespace and every punctuation character split off), the same greedy
longest-match WordPiece with ``##`` continuations, where a word longer than
100 characters or with a piece missing from the vocabulary becomes ``[UNK]``.
Pairs are framed ``[CLS] A [SEP] B [SEP]`` with type ids 0 for A, 1 for B.

A trained vocabulary holds the five special tokens at ids 0..4 (``[PAD]``
first, so padding is id 0); a released one has them wherever its file puts
them (BERT's own: 0, 100, 101, 102, 103), found by name (``special_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # ids 0..4 in a trained vocabulary
CONTINUATION_PREFIX = "##"  # a piece that continues the word before it
MAX_WORD_CHARS = 100  # longer words become [UNK], as in BERT
ALPHABET_LIMIT = 1000  # distinct characters a trained vocabulary keeps at most (the rarest are left to [UNK])


@dataclass(frozen=True)
class SpecialIds:
    """The ids of BERT's special tokens in one vocabulary."""

    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    def as_array(self) -> np.ndarray:
        return np.array([self.pad, self.unk, self.cls, self.sep, self.mask], dtype=np.int64)


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True,
                    strip_accents: bool | None = None) -> Tokenizer:
    """A WordPiece vocabulary of at most ``vocab_size`` entries learnt from ``texts``, specials at ids 0..4.

    The result is rebuilt from its own vocabulary, so it equals ``wordpiece_from_vocab(vocab_txt(result))``.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size is {vocab_size}: it must leave room beyond the {len(SPECIAL_TOKENS)} special tokens")
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_WORD_CHARS))
    _set_bert_pipeline(tokenizer, lowercase, strip_accents, cls_id=2, sep_id=3)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        limit_alphabet=ALPHABET_LIMIT, continuing_subword_prefix=CONTINUATION_PREFIX,
                                        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    return _bert_tokenizer(vocab, lowercase, strip_accents)


def wordpiece_from_vocab(vocab_text: str, lowercase: bool = True, strip_accents: bool | None = None) -> Tokenizer:
    """The tokenizer of a ``vocab.txt`` given as its text (not its path): line n is the token of id n."""
    lines = vocab_text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    vocab: dict[str, int] = {}
    for index, token in enumerate(lines):
        if token in vocab:
            raise ValueError(f"the vocabulary has {token!r} twice (lines {vocab[token] + 1} and {index + 1})")
        vocab[token] = index
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"the vocabulary ({len(vocab)} lines) has no {', '.join(missing)}: BERT needs all of "
                         f"{', '.join(SPECIAL_TOKENS)} (pass the text of vocab.txt, not its path)")
    return _bert_tokenizer(vocab, lowercase, strip_accents)


def vocab_txt(tokenizer: Tokenizer) -> str:
    """What ``vocab.txt`` holds: one token per line in id order, each line ended by a newline."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))):
        raise ValueError("the tokenizer's ids are not 0..n-1 without gaps: it has no vocab.txt form")
    bad = [t for t in tokens if "\n" in t or "\r" in t]
    if bad:
        raise ValueError(f"token {bad[0]!r} has a line break: it cannot be written to vocab.txt")
    return "".join(f"{t}\n" for t in tokens)


def special_ids(tokenizer: Tokenizer) -> SpecialIds:
    """The ids of [PAD], [UNK], [CLS], [SEP] and [MASK]; an error naming any the vocabulary lacks."""
    found = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in found.items() if i is None]
    if missing:
        raise ValueError(f"the vocabulary has no {', '.join(missing)}")
    return SpecialIds(*(found[t] for t in SPECIAL_TOKENS))


def continuation_mask(tokenizer: Tokenizer) -> np.ndarray:
    """(vocab_size,) bool: True where the token continues the word before it (``##`` pieces)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    mask = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for token, index in vocab.items():
        mask[index] = token.startswith(CONTINUATION_PREFIX) and len(token) > len(CONTINUATION_PREFIX)
    return mask


def _bert_tokenizer(vocab: dict[str, int], lowercase: bool, strip_accents: bool | None) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix=CONTINUATION_PREFIX,
                                           max_input_chars_per_word=MAX_WORD_CHARS))
    _set_bert_pipeline(tokenizer, lowercase, strip_accents, cls_id=vocab[CLS], sep_id=vocab[SEP])
    # As in BERT's own tokenizers, "[MASK]" (and the other specials) written in a text is that one token, not
    # "[", "mask", "]": fill-mask inputs depend on it. The ids are the vocabulary's own.
    tokenizer.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])
    return tokenizer


def _set_bert_pipeline(tokenizer: Tokenizer, lowercase: bool, strip_accents: bool | None, cls_id: int,
                       sep_id: int) -> None:
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                      strip_accents=strip_accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS}:0 $A:0 {SEP}:0",
        pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
