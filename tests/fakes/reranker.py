"""FakeReranker: the share of the query's content terms a passage contains, as a 0-1 "probability"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from core.types import ScoredChunk
from tests.fakes._text import terms


class FakeReranker:
    """Scores like a cross-encoder would in spirit (query and passage together) and in kind (0-1, sorted,
    `score_kind="rerank"`). `scores` pins the score of given chunk ids, for threshold tests."""

    def __init__(self, scores: Mapping[str, float] | None = None) -> None:
        self._scores = dict(scores or {})
        self.calls: list[tuple[str, list[str], int]] = []

    def score(self, query: str, text: str) -> float:
        wanted = set(terms(query))
        if not wanted:
            return 0.0
        return len(wanted & set(terms(text))) / len(wanted)

    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        self.calls.append((query, [c.chunk.chunk_id for c in candidates], top_k))
        rescored = [
            ScoredChunk(
                chunk=c.chunk,
                score=self._scores.get(c.chunk.chunk_id, self.score(query, c.chunk.text)),
                score_kind="rerank",
            )
            for c in candidates
        ]
        # Ties broken by chunk id, so that the order never depends on the order of the candidates.
        rescored.sort(key=lambda h: (-h.score, h.chunk.chunk_id))
        return rescored[: max(top_k, 0)]
