"""How relevant the best hit is, on a scale that a threshold can use, for every way hits are scored.

Rank-fused scores (RRF, weighted) and BM25 scores are relative to one query's candidates; they cannot
say "nothing here is relevant". What can: a cross-encoder probability, a cosine similarity from an
embedder that understands the query, or, for BM25-only queries, the share of the query's terms that
the best hit contains.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from core.text import CHINESE_FUNCTION_WORDS, english_stop_words, has_han

RelevanceKind = Literal["rerank", "cosine", "lexical", "none"]

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class Relevance:
    kind: RelevanceKind
    value: float | None  # None: nothing to measure (no hits)

    def below(self, threshold: float) -> bool:
        if threshold <= 0:
            return self.value is None
        return self.value is None or self.value < threshold


def terms(text: str) -> set[str]:
    """Content terms of a text: jieba words for Chinese runs, lower-cased words otherwise."""
    import jieba

    out: set[str] = set()
    stop = set(english_stop_words())
    for word in _WORD.findall(text.lower()):
        if has_han(word):
            out.update(t for t in jieba.lcut(word) if t.strip() and t not in CHINESE_FUNCTION_WORDS)
        elif word not in stop:
            out.add(word)
    return out


def lexical_coverage(query: str, texts: Sequence[str]) -> float | None:
    """The largest share of the query's content terms that any one text contains.

    Chinese terms are looked up as substrings: jieba may cut the same phrase differently in a short
    query and in a long passage (报销单要 vs 报销单必须)."""
    if not texts:
        return None
    wanted = terms(query)
    if not wanted:
        return 0.0
    best = 0.0
    for text in texts:
        lowered = text.lower()
        words = terms(text)
        found = sum(1 for t in wanted if (t in lowered if has_han(t) else t in words))
        best = max(best, found / len(wanted))
    return best
