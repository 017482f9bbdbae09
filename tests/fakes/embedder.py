"""FakeEmbedder: hashed bag-of-words vectors, unit length, deterministic across processes."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from core.text import english_stop_words
from core.types import TextKind
from tests.fakes._text import words

ANY_LANGUAGE = "*"
_EMPTY = "\x00empty"  # what a text without words hashes to, so that its vector is still unit length


class FakeEmbedder:
    """Each content word adds ±1 to one of `dimension` slots (chosen by a hash of the word); the sum is
    normalised. Texts that share words are close, texts that share none are near-orthogonal.

    Like all-MiniLM-L6-v2 it declares English only by default, reads at most `max_seq_length` words, and
    embeds queries and passages alike (no prefixes)."""

    def __init__(
        self, *, dimension: int = 256, languages: frozenset[str] = frozenset({"en"}), max_seq_length: int = 256
    ) -> None:
        self._dimension = dimension
        self._languages = languages
        self._max_seq_length = max_seq_length
        self._stop = frozenset(english_stop_words())
        self.calls: list[tuple[tuple[str, ...], TextKind]] = []

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def languages(self) -> frozenset[str]:
        return self._languages

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    def understands(self, language: str) -> bool:
        return ANY_LANGUAGE in self._languages or language in self._languages

    def embed(self, texts: Sequence[str], kind: TextKind) -> list[list[float]]:
        if kind not in ("query", "passage"):
            raise ValueError(f"unknown text kind {kind!r}")
        self.calls.append((tuple(texts), kind))
        return [self._vector(text) for text in texts]

    def count_tokens(self, text: str) -> int:
        return len(words(text))

    def _vector(self, text: str) -> list[float]:
        content = [w for w in words(text)[: self._max_seq_length] if w not in self._stop] or [_EMPTY]
        vector = [0.0] * self._dimension
        for word in content:
            digest = hashlib.sha256(word.encode()).digest()
            slot = int.from_bytes(digest[:8], "big") % self._dimension
            vector[slot] += 1.0 if digest[8] & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in vector))
        if norm == 0.0:  # colliding words cancelled out: fall back to the empty text's direction
            return self._vector("")
        return [x / norm for x in vector]
