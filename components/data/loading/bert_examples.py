"""BERT pretraining examples built at training time: two segments per example, masked afresh every epoch.

The recipe is the original one (Google's ``create_pretraining_data``), applied
per document inside a micro-batch instead of once over the corpus:

- **target length**: ``max_seq_length - 3`` tokens (room for [CLS] and two
  [SEP]); with probability ``short_seq_prob`` a random length in [2, that]
  instead, so the model also sees short inputs.
- **chunk**: sentences accumulated from a random start sentence (any but the
  last, so a chunk can hold two) until the target is reached or the document
  ends.
- **segments**: A is the chunk's first ``a_end`` sentences (``a_end`` uniform
  in [1, sentences - 1]); with probability 0.5, or always when the chunk is a
  single sentence, B is taken from another document of the micro-batch,
  starting at a random sentence and filled to the target length left over
  (``nsp_label`` 1); otherwise B is the rest of the chunk (``nsp_label`` 0).
  Google "puts back" the unused sentences of a chunk when B is random, because
  it walks each document once; here every example starts at its own random
  sentence, so nothing is consumed and nothing needs putting back.
- **truncation**: while A and B exceed ``max_seq_length - 3`` tokens the longer
  one (B on a tie) loses one token, from its front or its back with equal
  chance.
- **layout**: ``[CLS] A [SEP] B [SEP]``, type ids 0 up to the first [SEP]
  and 1 after it, padded with [PAD] to ``max_seq_length``.
- **masking**: ``min(max_predictions, max(1, round(length * mask_prob)))``
  positions among the non-special ones (length counts the specials, as in
  the original), chosen in random order; with ``whole_word_mask`` a word's
  ``##`` pieces are chosen together with its first piece (and a word that
  would overflow the budget is skipped). Each chosen position becomes [MASK]
  with probability 0.8, a random non-special id with 0.1, and stays itself
  with 0.1; ``mlm_labels`` holds its original id (-100 elsewhere).

Reproducibility: every random choice for document i comes from ``rngs[i]``
alone: it seeds one generator per example, and each example draws its own
choices (target length, start, split, random-next coin) before anything that
depends on another document. So the same document with the same generator
gives the same examples in any batch, except those whose B is random: their
donor is document ``(i + 1 + k) % N`` of the batch, with ``k`` drawn from the
example's generator (uniform over the other N - 1 documents), and the
donor's text then shapes B, the truncation and the masks. That is fixed by
``rngs[i]`` and the batch order, both of which a resume replays exactly.
NSP needs a second document: a micro-batch of one is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from components.data.loading.wordpiece import SpecialIds

IGNORE = -100  # the label of positions that are not predicted (PyTorch's cross-entropy ignore_index)
RANDOM_NEXT, IS_NEXT = 1, 0  # nsp_label values


@dataclass(frozen=True)
class ExampleConfig:
    """How pretraining examples are cut and masked."""

    max_seq_length: int = 128  # tokens per example including [CLS] and two [SEP]; 512 in BERT's phase two
    short_seq_prob: float = 0.1  # chance of a random shorter target length
    mask_prob: float = 0.15  # share of an example's tokens to predict
    max_predictions: int = 20  # at most this many predicted positions per example (BERT: 20 at 128, 80 at 512)
    whole_word_mask: bool = False  # mask every piece of a word together
    examples_per_document: int = 1  # examples each document yields per epoch, each from its own start

    def __post_init__(self):
        if self.max_seq_length < 8:
            raise ValueError(f"max_seq_length is {self.max_seq_length}: it must be at least 8")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise ValueError(f"short_seq_prob is {self.short_seq_prob}: it must lie in [0, 1]")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob is {self.mask_prob}: it must lie in (0, 1)")
        if self.max_predictions < 1:
            raise ValueError(f"max_predictions is {self.max_predictions}: it must be at least 1")
        if self.examples_per_document < 1:
            raise ValueError(f"examples_per_document is {self.examples_per_document}: it must be at least 1")

    @property
    def max_tokens(self) -> int:
        """Tokens of A and B together (the three specials aside)."""
        return self.max_seq_length - 3


def tokenize_documents(tokenizer: Tokenizer, documents: list[list[str]]) -> list[list[list[int]]]:
    """Token ids (no specials) per document, per sentence; sentences with no tokens are dropped."""
    sentences = [s for doc in documents for s in doc]
    encoded = iter(tokenizer.encode_batch(sentences, add_special_tokens=False)) if sentences else iter(())
    out = []
    for doc in documents:
        ids = (next(encoded).ids for _ in doc)
        out.append([s for s in ids if s])
    return out


def pretraining_batch(docs: Sequence[Sequence[Sequence[int]]], rngs: Sequence[np.random.Generator],
                      cfg: ExampleConfig, ids: SpecialIds, vocab_size: int,
                      continuation: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``cfg.examples_per_document`` masked two-segment examples per document (document i's consecutive).

    ``docs``: token ids per document, per sentence (``tokenize_documents``); ``rngs``: one generator per
    document; ``continuation``: (vocab_size,) bool, True for ``##`` pieces (needed for whole-word masking).
    Returns M = N * examples_per_document rows of L = max_seq_length:
    ``input_ids``, ``token_type_ids``, ``attention_mask`` (1 = real token), ``mlm_labels`` (original id at
    predicted positions, -100 elsewhere), all (M, L) int64, and ``nsp_label`` (M,) int64 (1 = B is random).
    """
    n = len(docs)
    if n < 2:
        raise ValueError(f"a micro-batch of {n} document(s): next-sentence prediction takes the random B "
                         f"from another document of the batch, so it needs at least 2")
    if len(rngs) != n:
        raise ValueError(f"{len(rngs)} generators for {n} documents")
    empty = [i for i, d in enumerate(docs) if not any(len(s) for s in d)]
    if empty:
        raise ValueError(f"document {empty[0]} of the micro-batch has no tokens: every document needs text")
    if cfg.whole_word_mask and continuation is None:
        raise ValueError("whole_word_mask needs the vocabulary's continuation mask (wordpiece.continuation_mask)")
    docs = [[s for s in d if len(s)] for d in docs]
    specials = ids.as_array()
    replacements = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), specials)
    m, length = n * cfg.examples_per_document, cfg.max_seq_length
    out = {
        "input_ids": np.full((m, length), ids.pad, dtype=np.int64),
        "token_type_ids": np.zeros((m, length), dtype=np.int64),
        "attention_mask": np.zeros((m, length), dtype=np.int64),
        "mlm_labels": np.full((m, length), IGNORE, dtype=np.int64),
        "nsp_label": np.zeros(m, dtype=np.int64),
    }
    row = 0
    for i, rng in enumerate(rngs):
        for seed in rng.integers(0, 2**63, size=cfg.examples_per_document):
            rng_ex = np.random.default_rng(seed)  # one stream per example: a random B's draws stay inside it
            a, b, random_next = _segments(docs, i, rng_ex, cfg)
            tokens = np.array([ids.cls, *a, ids.sep, *b, ids.sep], dtype=np.int64)
            n_tokens = len(tokens)
            out["token_type_ids"][row, len(a) + 2:n_tokens] = 1
            out["attention_mask"][row, :n_tokens] = 1
            out["nsp_label"][row] = RANDOM_NEXT if random_next else IS_NEXT
            positions = _mask_positions(tokens, rng_ex, cfg, specials, continuation)
            out["mlm_labels"][row, positions] = tokens[positions]
            out["input_ids"][row, :n_tokens] = _corrupt(tokens, positions, rng_ex, ids.mask, replacements)
            row += 1
    return out


def _segments(docs: Sequence[Sequence[Sequence[int]]], i: int, rng: np.random.Generator,
              cfg: ExampleConfig) -> tuple[list[int], list[int], bool]:
    """Segments A and B of one example of document i, truncated to fit, and whether B is random."""
    doc = docs[i]
    target = cfg.max_tokens
    if rng.random() < cfg.short_seq_prob:
        target = int(rng.integers(2, cfg.max_tokens + 1))
    start = int(rng.integers(0, max(1, len(doc) - 1)))
    chunk = _fill(doc, start, target)
    a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
    a = [t for s in chunk[:a_end] for t in s]
    random_next = len(chunk) == 1 or rng.random() < 0.5
    if random_next:
        donor = docs[(i + 1 + int(rng.integers(0, len(docs) - 1))) % len(docs)]
        b = [t for s in _fill(donor, int(rng.integers(0, len(donor))), max(1, target - len(a))) for t in s]
    else:
        b = [t for s in chunk[a_end:] for t in s]
    a_cut, b_cut = truncation_amounts(len(a), len(b), cfg.max_tokens)
    a = _cut(a, a_cut, rng)
    b = _cut(b, b_cut, rng)
    return a, b, random_next


def _fill(doc: Sequence[Sequence[int]], start: int, target: int) -> list[Sequence[int]]:
    """Sentences from ``start`` until they hold ``target`` tokens or the document ends (at least one)."""
    chunk, total = [], 0
    for sentence in doc[start:]:
        chunk.append(sentence)
        total += len(sentence)
        if total >= target:
            break
    return chunk


def truncation_amounts(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Tokens A and B lose when the longer one (B on a tie) loses one at a time until both fit."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return 0, 0
    gap = min(abs(len_a - len_b), excess)
    cut_a, cut_b = (gap, 0) if len_a > len_b else (0, gap)
    rest = excess - gap  # now equal in length: B, A, B, A, ...
    return cut_a + rest // 2, cut_b + (rest + 1) // 2


def _cut(tokens: list[int], count: int, rng: np.random.Generator) -> list[int]:
    """``tokens`` less ``count`` tokens, each taken from the front or the back with equal chance."""
    if count == 0:
        return tokens
    front = int(rng.binomial(count, 0.5))
    return tokens[front:len(tokens) - (count - front)]


def _mask_positions(tokens: np.ndarray, rng: np.random.Generator, cfg: ExampleConfig, specials: np.ndarray,
                    continuation: np.ndarray | None) -> np.ndarray:
    """Sorted positions to predict: whole words (or single pieces) in random order until the budget is met."""
    budget = min(cfg.max_predictions, max(1, int(round(len(tokens) * cfg.mask_prob))))
    candidates = np.flatnonzero(~np.isin(tokens, specials))
    if not cfg.whole_word_mask:
        return np.sort(rng.permutation(candidates)[:budget])
    # A piece starts a new word unless it is a ## piece right after another candidate of the same segment.
    joins = continuation[tokens[candidates]] & np.r_[False, np.diff(candidates) == 1]
    words = np.split(candidates, np.flatnonzero(~joins)[1:])
    chosen: list[np.ndarray] = []
    count = 0
    for w in rng.permutation(len(words)):
        if count >= budget:
            break
        if count + len(words[w]) > budget:
            continue
        chosen.append(words[w])
        count += len(words[w])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _corrupt(tokens: np.ndarray, positions: np.ndarray, rng: np.random.Generator, mask_id: int,
             replacements: np.ndarray) -> np.ndarray:
    """``tokens`` with each chosen position made [MASK] (80 %), a random id (10 %) or left alone (10 %)."""
    out = tokens.copy()
    draw = rng.random(len(positions))
    out[positions[draw < 0.8]] = mask_id
    randomized = positions[draw >= 0.9]
    out[randomized] = replacements[rng.integers(0, len(replacements), size=len(randomized))]
    return out


# -- baselines for held-out masked-token evaluation ---------------------------------------------------------------

def unigram_counts(docs: Sequence[Sequence[Sequence[int]]], vocab_size: int) -> np.ndarray:
    """(vocab_size,) int64: how often each id occurs in the documents' sentences."""
    flat = [t for doc in docs for s in doc for t in s]
    return np.bincount(np.asarray(flat, dtype=np.int64), minlength=vocab_size)[:vocab_size]


def most_frequent_accuracy(counts: np.ndarray, targets: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent training token at the masked positions ``targets``."""
    targets = np.asarray(targets).ravel()
    if targets.size == 0:
        return float("nan")
    return float(np.mean(targets == int(np.argmax(counts))))


def unigram_entropy(counts: np.ndarray, targets: np.ndarray, smoothing: float = 1.0) -> float:
    """Mean -log p(target) in nats under the training unigram distribution (add-``smoothing`` counts).

    The cross-entropy a model that ignores context scores on the masked ``targets``: the MLM loss to beat.
    """
    targets = np.asarray(targets).ravel()
    if targets.size == 0:
        return float("nan")
    smoothed = np.asarray(counts, dtype=np.float64) + smoothing
    log_p = np.log(smoothed[targets]) - np.log(smoothed.sum())
    return float(-log_p.mean())
