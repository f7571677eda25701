"""Test-set leakage: does a text overlap an evaluation document? Word n-gram overlap, as GPT-3's decontamination.

Written here rather than taken from a library: the check is a set of hashed word n-grams, a few lines, and the
decontamination tools that exist (e.g. in lm-evaluation-harness) are tied to their own benchmark formats.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens: punctuation, case and spacing do not hide a copy."""
    return _WORD.findall(text.lower())


class OverlapIndex:
    """The word ``n``-grams of a set of documents; a text overlaps when it shares one with them, or (shorter than
    ``n`` words) when its words equal a document's."""

    def __init__(self, documents: Iterable[str], n: int):
        self.n = n
        self.grams: set[int] = set()
        self.whole: set[int] = set()
        for doc in documents:
            self.add(doc)

    def add(self, document: str) -> None:
        tokens = words(document)
        self.whole.add(hash(tuple(tokens)))
        self.grams.update(hash(tuple(tokens[i:i + self.n])) for i in range(len(tokens) - self.n + 1))

    def overlaps(self, text: str) -> bool:
        tokens = words(text)
        if hash(tuple(tokens)) in self.whole:
            return True
        return any(hash(tuple(tokens[i:i + self.n])) in self.grams for i in range(len(tokens) - self.n + 1))
