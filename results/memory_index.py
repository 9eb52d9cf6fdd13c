"""Turning memory text into search terms, shared by indexing and querying."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9_]+(?:\.[0-9]+)?")
_STOP = frozenset(
    "a an and are as at be by for from has have in is it its of on or that the this to was were "
    "will with we our not no but so than then there these those into also very more most".split()
)


def stem(word: str) -> str:
    """A deliberately light stemmer: plurals and common verb endings, so 'rates' finds 'rate'
    and 'warming' finds 'warm', without a dependency."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def terms(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


def index_terms(text: str, tags=()) -> Counter:
    """Term frequencies of a memory; each tag counts as a term of the text too."""
    counts = Counter(terms(text))
    for tag in tags:
        counts.update(terms(tag))
    return counts
