"""Tokenisation shared by the fakes: simple, deterministic, and good enough to rank a handful of chunks."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from core.text import english_stop_words

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_HAN_CHAR = re.compile(f"[{_HAN}]")
# A run of letters/digits that is not Han, or a run of Han characters.
_WORD = re.compile(rf"[^\W_{_HAN}]+|[{_HAN}]+", re.UNICODE)


def words(text: str) -> list[str]:
    """Every word, lower-cased; a Han run is one character per word (what a count of tokens needs)."""
    out: list[str] = []
    for run in _WORD.findall(text.lower()):
        out.extend(run if _HAN_CHAR.match(run) else [run])
    return out


def terms(text: str) -> list[str]:
    """Content terms with repeats (for term frequencies): English stop words dropped, Chinese cut by jieba
    as Milvus' `jieba` analyzer does."""
    stop = set(english_stop_words())
    out: list[str] = []
    for run in _WORD.findall(text.lower()):
        if _HAN_CHAR.match(run):
            import jieba

            out.extend(t for t in jieba.lcut(run) if t.strip())
        elif run not in stop:
            out.append(run)
    return out


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
