"""Several rankings of one question (as asked, and made standalone from its conversation) fused into one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.types import ScoredChunk, SearchMode

# Reciprocal rank fusion's constant: the usual 60, which keeps a hit that one ranking alone puts first
# from outweighing one that both rankings place near the top.
RRF_K = 60


@dataclass
class Candidates:
    """Ranked hits before context assembly: what `kb eval retrieval` scores."""

    language: str
    mode: SearchMode
    hits: list[ScoredChunk]
    vector: list[float] | None
    timings: dict[str, float]
    reranked: bool


def fuse_candidates(lists: Sequence[Candidates], k: int = RRF_K) -> Candidates:
    """Reciprocal rank fusion of the rankings, the first ranking winning ties.

    A hit keeps the best score it got where scores mean the same thing in every list (cross-encoder
    probabilities, cosines), so the relevance check still reads a score of its own kind."""
    first = lists[0]
    fused: dict[str, float] = {}
    best: dict[str, ScoredChunk] = {}
    for ranking in lists:
        for rank, hit in enumerate(ranking.hits):
            key = hit.chunk.chunk_id
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank + 1)
            kept = best.get(key)
            if kept is None or (hit.score_kind == kept.score_kind and hit.score > kept.score):
                best[key] = hit
    order = sorted(fused, key=lambda key: -fused[key])  # stable: first-seen order breaks ties
    timings: dict[str, float] = {}
    for ranking in lists:
        for name, value in ranking.timings.items():
            timings[name] = timings.get(name, 0.0) + value
    return Candidates(
        language=first.language, mode=first.mode, hits=[best[key] for key in order],
        vector=first.vector, timings=timings, reranked=all(r.reranked for r in lists),
    )  # fmt: skip
