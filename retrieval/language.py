"""Cheap language detection for routing (prompt language, which retrievers to fuse)."""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def detect_language(text: str) -> str:
    """'zh' when Chinese characters carry the text, else 'en'.

    A Chinese character holds about a word's meaning, so characters are weighed against Latin words,
    which keeps "VPN 密码怎么重置？" Chinese and "What does 报销 mean?" English.
    """
    cjk = len(_CJK.findall(text))
    latin_words = len(_LATIN_WORD.findall(text))
    return "zh" if cjk > 0 and cjk >= latin_words else "en"
