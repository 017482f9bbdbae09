"""Citation markers in model output: find them, drop the invalid ones, report what each sentence cites."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.types import SentenceGrounding

# [1], [1, 2], [1][2], 【1】, [1，2]: the forms models write in English and Chinese answers.
_MARKER = re.compile(r"[\[【]\s*(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\s*[\]】]")
_VALID_MARKER = re.compile(r"\[(\d+)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])|\n+")
_WORDISH = re.compile(r"\w")
_MIN_WORD_CHARS = 4  # shorter pieces ("OK.", a list number) are not claims that need a source


@dataclass
class CitationCheck:
    text: str
    cited: list[int] = field(default_factory=list)  # source numbers in order of first citation
    invalid: list[int] = field(default_factory=list)
    sentences: list[SentenceGrounding] = field(default_factory=list)

    @property
    def uncited_sentences(self) -> list[str]:
        return [s.text for s in self.sentences if not s.grounded]

    @property
    def grounded(self) -> bool:
        return bool(self.cited) and all(s.grounded for s in self.sentences)


def split_sentences(text: str) -> list[SentenceGrounding]:
    """Sentences with the valid markers each carries; a piece holding only markers ("... days. [1]")
    belongs to the sentence before it."""
    pieces: list[str] = []
    for piece in (p.strip() for p in _SENTENCE_END.split(text)):
        if not piece:
            continue
        if pieces and not _VALID_MARKER.sub("", piece).strip(" .。"):
            pieces[-1] = f"{pieces[-1]} {piece}"
        else:
            pieces.append(piece)
    sentences = []
    for piece in pieces:
        if len(_WORDISH.findall(_VALID_MARKER.sub("", piece))) < _MIN_WORD_CHARS:
            continue
        numbers = list(dict.fromkeys(int(n) for n in _VALID_MARKER.findall(piece)))
        sentences.append(SentenceGrounding(text=piece, citations=numbers, grounded=bool(numbers)))
    return sentences


def check_citations(answer: str, n_sources: int) -> CitationCheck:
    """Keep markers that name a real source (1..n_sources); remove the others from the text."""
    cited: list[int] = []
    invalid: list[int] = []

    def _rewrite(match: re.Match[str]) -> str:
        numbers = [int(x) for x in re.split(r"[,，、]", match.group(1))]
        valid = [n for n in numbers if 1 <= n <= n_sources]
        invalid.extend(n for n in numbers if not 1 <= n <= n_sources)
        for n in valid:
            if n not in cited:
                cited.append(n)
        return "".join(f"[{n}]" for n in valid)

    text = _MARKER.sub(_rewrite, answer)
    text = re.sub(r"[ \t]+([.,;:!?。，；：！？])", r"\1", text).strip()
    return CitationCheck(text=text, cited=cited, invalid=invalid, sentences=split_sentences(text))


def citation_pattern(n_sources: int, refusal: str, language: str) -> str:
    """A regex for constrained decoding: the refusal, or 1-3 sentences that each end with [n], n a real source.

    Small models rarely cite on their own; with vLLM's structured outputs every sentence carries a
    valid marker, and the model still chooses which source each sentence cites.
    """
    numbers = "|".join(str(i) for i in range(1, max(n_sources, 1) + 1))
    sentence_chars = 60 if language == "zh" else 200
    end = "[。]?" if language == "zh" else r"\.?"
    sentence = rf"[^\[\]\n【】]{{1,{sentence_chars}}} ?\[({numbers})\]{end}"
    return rf"({re.escape(refusal)}|({sentence} ?){{1,3}})"
