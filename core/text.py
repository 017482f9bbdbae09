"""Text facts every stage needs: which script a text is in, and which English words carry no topic."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

# Han ideographs (basic, extension A, compatibility): the characters that decide "this text is Chinese".
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")

# Chinese function and question words that carry no topic; jieba returns them as their own tokens.
CHINESE_FUNCTION_WORDS = frozenset(
    [
        "的", "了", "是", "在", "和", "与", "及", "或", "吗", "呢", "吧", "啊", "把", "被",
        "对", "从", "到", "为", "以", "于", "之", "其", "这", "那", "有", "个", "也", "都",
        "就", "而", "又", "什么", "怎么", "哪", "哪些", "如何", "谁", "多少", "几", "哪个", "为什么",
    ]
)  # fmt: skip


def has_han(text: str) -> bool:
    return _HAN.search(text) is not None


def is_wide(char: str) -> bool:
    """A character written without spaces around it: CJK punctuation, kana, Han, full-width forms.

    Lines and OCR words that meet at such a character join without a space."""
    return "\u3000" <= char <= "\u9fff" or "\uff00" <= char <= "\uffef"


def join_wide(pieces: list[str], *, hyphenated: bool = False) -> str:
    """Join lines or words: no space where a wide character meets the join, one space elsewhere.

    With `hyphenated`, a piece ending in "-" before a lower-case piece is a word split across lines."""
    joined = pieces[0]
    for piece in pieces[1:]:
        if not piece:
            continue
        if hyphenated and joined.endswith("-") and piece[:1].islower():
            joined = joined[:-1] + piece
        elif (joined and is_wide(joined[-1])) or is_wide(piece[0]):
            joined += piece
        else:
            joined += " " + piece
    return joined


# What detect_language tells apart: the languages kb calibrates, routes and refuses per.
LANGUAGES = ("en", "zh")


def detect_language(text: str) -> str:
    """'zh' when Chinese characters carry the text, else 'en'.

    A Chinese character holds about a word's meaning, so characters are weighed against Latin words,
    which keeps "VPN 密码怎么重置？" Chinese and "What does 报销 mean?" English.
    """
    han = len(_HAN.findall(text))
    latin_words = len(_LATIN_WORD.findall(text))
    return "zh" if han > 0 and han >= latin_words else "en"


@cache
def english_stop_words() -> tuple[str, ...]:
    path = Path(__file__).with_name("stopwords_en.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(w for w in (line.strip() for line in lines) if w and not w.startswith("#"))
