"""Sentence splitting of prose paragraphs, by sentencex (Wikimedia's rule-based segmenter, compiled, ~300 languages).

Chosen by measurement (``benchmarks/sentence_segmenters.py``): on hard English
cases (abbreviations such as "U.S.", "Dr.", "e.g.", "ca.", "Jr."; decimals;
initials; quoted sentences) sentencex, blingfire and syntok split all 11
right and pysbd 10; on the embedded sample's prose sentencex ran at ~107 MB/s
on one core against blingfire's ~17, syntok's ~1.3 and pysbd's ~0.2. It is
maintained (Wikimedia's), installs from the registry with its rules inside (no
separate data download, nothing unpickled) and depends on nothing.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from sentencex import segment

DEFAULT_LANGUAGE = "en"


def split_sentences(paragraphs: Iterable[str], language: str = DEFAULT_LANGUAGE) -> Iterator[str]:
    """Each paragraph's sentences in order, stripped; a sentence never spans two paragraphs, and one with no
    letter or digit (a lone ")") is dropped."""
    for paragraph in paragraphs:
        for sentence in segment(language, paragraph):
            sentence = sentence.strip()
            if any(c.isalnum() for c in sentence):
                yield sentence
