"""CLIP text tokenizer: OpenAI's byte-level BPE through HF ``tokenizers``, or one trained on captions.

A caption is cleaned the way OpenAI's CLIP cleans it (``ftfy.fix_text``, HTML
unescaped twice, whitespace runs collapsed to one space, lower-cased), split
into words by CLIP's pattern (the contractions ``'s 't 're 've 'm 'll 'd``,
runs of letters, single digits, runs of anything else; whitespace dropped),
each word mapped to byte characters (GPT-2's byte-to-unicode table) and
merged by BPE with ``</w>`` marking a word's last symbol. Every caption
becomes ``<start_of_text> ids <end_of_text>``; one longer than the context
length is cut to it with its last slot overwritten by the end token, and a
shorter one is padded with 0. With OpenAI's vocabulary the ids equal
``open_clip.tokenize`` (which is never imported here) for every character
assigned in Python's Unicode database. Letters and digits only the newer
Unicode of the ``regex`` package knows (open_clip's pattern runs on it, ours on
the Oniguruma inside ``tokenizers``) split apart here where open_clip keeps
them in a word.

Id layout, OpenAI's, also for trained tokenizers: the 256 byte characters in
the byte-to-unicode order, the same 256 ending a word (``x</w>``), one id per
merge in merge order, then the start and end tokens as the last two ids.
Padding is id 0 (the byte ``!``, as in OpenAI's CLIP: the text tower pools at
the end token, so the padding id is never read as text).

Stored as two files (``files()``): ``tokenizer.json`` (``Tokenizer.to_str()``)
and ``tokenizer_config.json`` (clean-up, context length, start and end tokens).
``load_text_tokenizer`` reads those, or a caption tokenizer of
``components.data.loading.tokenizer`` (``[PAD] [SOT] [EOT]``, no config file),
which then encodes exactly as ``encode_captions``.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
from pathlib import Path
from typing import Iterable, Mapping, Protocol

import ftfy
import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from components.data.loading.tokenizer import EOT, SOT, encode_captions

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
KIND = "clip-bpe"

START, END = "<start_of_text>", "<end_of_text>"
DEFAULT_CONTEXT_LENGTH = 77
END_OF_WORD = "</w>"
PAD_ID = 0
OPENAI_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
OPENAI_MERGES = 49152 - 256 - 2  # merges OpenAI's CLIP uses from the file (it holds more)

# CLIP's word pattern, case-insensitive as OpenAI's: the special tokens first, so a
# caption holding "<end_of_text>" as a word gets the special id, as in open_clip.
_WORDS = r"'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+"
# Matched by none of OpenAI's alternatives (case-insensitively it folds to a letter, so
# the punctuation class excludes it, yet it is no letter): dropped there, a separator here.
_UNMATCHED = "\u0345"


def _words_text(text: str) -> str:
    text = clean_caption(text)
    return text.replace(_UNMATCHED, " ") if _UNMATCHED in text else text


def clean_caption(text: str) -> str:
    """OpenAI CLIP's clean-up: mojibake and HTML entities fixed, whitespace collapsed, lower case."""
    if not (text.isascii() and text.isprintable() and "&" not in text):  # else both leave it as it is
        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def byte_characters() -> list[str]:
    """The character standing for each byte 0..255 in byte-level BPE, in CLIP's vocabulary order.

    Printable Latin-1 bytes stand for themselves and come first; the other bytes
    (controls, space, soft hyphen) follow, mapped to 256, 257, ... in byte order.
    The same table as ``pre_tokenizers.ByteLevel``'s; the order is OpenAI's ids 0..255.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shown = set(printable)
    others = [b for b in range(256) if b not in shown]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _word_splitter(specials: tuple[str, ...]) -> pre_tokenizers.PreTokenizer:
    alternatives = "|".join(_escape(s) for s in specials)
    pattern = "(?i)" + (alternatives + "|" if alternatives else "") + _WORDS
    # Cleaned text holds only single spaces as whitespace, and every other character
    # matches one alternative, so "isolated" leaves no gaps: the words are findall's.
    return pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
    ])


def _escape(text: str) -> str:
    return "".join("\\" + c if c in "\\.^$|?*+()[]{}-" else c for c in text)


def _build(merges: list[tuple[str, str]], vocab_tokens: list[str], start: str, end: str) -> Tokenizer:
    vocab = {token: i for i, token in enumerate(vocab_tokens)}
    if len(vocab) != len(vocab_tokens):
        raise ValueError("duplicate tokens in the vocabulary")
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, end_of_word_suffix=END_OF_WORD, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        _word_splitter((start, end)),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " ")])
    return tokenizer


def _vocab_tokens(merges: Iterable[tuple[str, str]], start: str, end: str, size: int | None = None) -> tuple[list[tuple[str, str]], list[str]]:
    """OpenAI's layout: bytes, word-final bytes, one token per merge, start, end; ``size`` caps it."""
    chars = byte_characters()
    tokens = chars + [c + END_OF_WORD for c in chars]
    seen = set(tokens)
    kept = []
    for a, b in merges:
        merged = a + b
        if merged not in seen:
            if size is not None and len(tokens) + 2 >= size:
                break
            tokens.append(merged)
            seen.add(merged)
        kept.append((a, b))
    return kept, tokens + [start, end]


class ClipTokenizer:
    """CLIP-style BPE: ``encode(texts, context_length)`` gives (N, context_length) int64 ids."""

    def __init__(self, tokenizer: Tokenizer, *, context_length: int = DEFAULT_CONTEXT_LENGTH,
                 start: str = START, end: str = END):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.start, self.end = start, end
        self.start_id, self.end_id = tokenizer.token_to_id(start), tokenizer.token_to_id(end)
        if self.start_id is None or self.end_id is None:
            raise ValueError(f"the tokenizer has no {start!r} or {end!r} token")
        self.pad_id = PAD_ID
        self._words = _word_splitter((start, end))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Ids of each caption after clean-up, without start and end tokens and uncut."""
        cleaned = [_words_text(t) for t in texts]
        out = [e.ids for e in self.tokenizer.encode_batch(cleaned, add_special_tokens=False)]
        for i, text in enumerate(cleaned):
            if self.start in text or self.end in text:  # rare: a special token written in the caption
                out[i] = self._with_specials(text)
        return out

    def _with_specials(self, text: str) -> list[int]:
        specials = {self.start: self.start_id, self.end: self.end_id}
        ids, run = [], None  # run: (first, last) character offsets of words between special tokens
        for word, (first, last) in self._words.pre_tokenize_str(text) + [(self.start, (len(text), len(text)))]:
            if word in specials:
                if run is not None:
                    ids += self.tokenizer.encode(text[run[0]:run[1]], add_special_tokens=False).ids
                    run = None
                if first < len(text):
                    ids.append(specials[word])
            else:
                run = (first, last) if run is None else (run[0], last)
        return ids

    def encode(self, texts: str | list[str], context_length: int | None = None) -> np.ndarray:
        """(N, context_length) int64: start, ids, end; cut to the length keeping the end token; 0-padded."""
        if isinstance(texts, str):
            texts = [texts]
        length = self.context_length if context_length is None else context_length
        if length < 1:
            raise ValueError(f"context length must be at least 1, got {length}")
        out = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        for i, ids in enumerate(self.token_ids(list(texts))):
            row = [self.start_id, *ids[: length - 1], self.end_id]
            if len(row) > length:
                row = row[:length]
                row[-1] = self.end_id
            out[i, : len(row)] = row
        return out

    def decode(self, ids) -> str:
        """Text of ids, start, end and padding (after the end token) dropped; words space-separated."""
        ids = [int(i) for i in ids]
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        ids = [i for i in ids if i != self.start_id]
        return self.tokenizer.decode(ids, skip_special_tokens=False).strip()

    def config(self) -> dict:
        return {"kind": KIND, "context_length": self.context_length, "start": self.start, "end": self.end,
                "pad_id": self.pad_id, "end_of_word": END_OF_WORD, "clean": "ftfy+html+whitespace+lower"}

    def files(self) -> dict[str, str]:
        """What a task stores: the HF tokenizers JSON and this tokenizer's config."""
        return {TOKENIZER_FILE: self.tokenizer.to_str(), CONFIG_FILE: json.dumps(self.config(), indent=1)}


class CaptionTokenizer:
    """A caption tokenizer of ``components.data.loading.tokenizer`` behind the same ``encode``."""

    def __init__(self, tokenizer: Tokenizer, context_length: int | None = None):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.start_id, self.end_id = tokenizer.token_to_id(SOT), tokenizer.token_to_id(EOT)
        self.pad_id = PAD_ID

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: str | list[str], context_length: int | None = None) -> np.ndarray:
        length = context_length or self.context_length
        if not length:
            raise ValueError("a caption tokenizer needs a context length")
        return encode_captions(self.tokenizer, [texts] if isinstance(texts, str) else list(texts), length)

    def files(self) -> dict[str, str]:
        return {TOKENIZER_FILE: self.tokenizer.to_str()}


class TextTokenizer(Protocol):
    start_id: int
    end_id: int
    pad_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, texts: str | list[str], context_length: int | None = None) -> np.ndarray: ...

    def files(self) -> dict[str, str]: ...


def openai_vocab_path() -> Path:
    """OpenAI's BPE merges file shipped in the open_clip wheel, found without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / OPENAI_VOCAB_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{OPENAI_VOCAB_FILE} not found: install open_clip_torch or pass the file's path")


def openai_clip_tokenizer(path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH) -> ClipTokenizer:
    """OpenAI's CLIP tokenizer (49408 ids) from ``bpe_simple_vocab_16e6.txt.gz`` (open_clip's copy by default)."""
    lines = gzip.open(path or openai_vocab_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : OPENAI_MERGES + 1] if line.strip()]  # line 0: a version
    merges, tokens = _vocab_tokens(merges, START, END)
    return ClipTokenizer(_build(merges, tokens, START, END), context_length=context_length)


def train_clip_tokenizer(captions: Iterable[str], vocab_size: int,
                         context_length: int = DEFAULT_CONTEXT_LENGTH) -> ClipTokenizer:
    """Merges learnt from cleaned captions, in OpenAI's layout; at most ``vocab_size`` ids.

    Fewer when the captions run out of pairs to merge. At least 514 ids: the 512
    byte tokens and the start and end tokens.
    """
    if vocab_size < 514:
        raise ValueError(f"a CLIP tokenizer needs at least 514 ids (512 byte tokens, start, end), got {vocab_size}")
    learner = Tokenizer(models.BPE(end_of_word_suffix=END_OF_WORD))
    learner.pre_tokenizer = pre_tokenizers.Sequence([
        _word_splitter((START, END)), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,  # the learner's alphabet is at most our 512 byte tokens, so enough merges
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=END_OF_WORD,
        show_progress=False,
    )
    learner.train_from_iterator((_words_text(c) for c in captions), trainer)
    learnt = json.loads(learner.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt]
    merges, tokens = _vocab_tokens(merges, START, END, size=vocab_size)
    return ClipTokenizer(_build(merges, tokens, START, END), context_length=context_length)


def load_text_tokenizer(files: Mapping[str, str]) -> ClipTokenizer | CaptionTokenizer:
    """The tokenizer a task stored: a CLIP one (with ``tokenizer_config.json``) or a caption one (without)."""
    if CONFIG_FILE not in files:
        tokenizer = Tokenizer.from_str(files[TOKENIZER_FILE])
        if tokenizer.token_to_id(SOT) is None or tokenizer.token_to_id(EOT) is None:
            raise ValueError(f"{TOKENIZER_FILE} without {CONFIG_FILE} must be a caption tokenizer with {SOT} and {EOT}")
        return CaptionTokenizer(tokenizer)
    config = json.loads(files[CONFIG_FILE])
    if config.get("kind") != KIND:
        raise ValueError(f"{CONFIG_FILE} is of kind {config.get('kind')!r}, expected {KIND!r}")
    return ClipTokenizer(Tokenizer.from_str(files[TOKENIZER_FILE]), context_length=config["context_length"],
                         start=config["start"], end=config["end"])
