"""QueryPipeline: embed the question, search Milvus (dense, BM25 or hybrid), assemble the context."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from retrieval.context import Source, assemble_context
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.language import detect_language
from retrieval.store import MilvusStore
from retrieval.types import ScoredChunk, SearchFilter, SearchMode

log = logging.getLogger(__name__)


@dataclass
class Retrieval:
    question: str
    language: str
    mode: SearchMode
    hits: list[ScoredChunk]
    sources: list[Source]
    timings: dict[str, float] = field(default_factory=dict)


class QueryPipeline:
    def __init__(
        self,
        *,
        embedder: SentenceTransformerEmbedder,
        store: MilvusStore,
        default_mode: SearchMode = "hybrid",
        candidates: int = 30,
        context_tokens: int = 1200,
        hidden_versions: Callable[[str], Sequence[tuple[str, int]]] | None = None,
    ) -> None:
        # Asked per query: which (doc_id, version) pairs are mid-switch and must not be seen.
        self._hidden_versions = hidden_versions
        self._embedder = embedder
        self._store = store
        self._mode = default_mode
        self._candidates = candidates
        self._context_tokens = context_tokens

    def effective_mode(self, requested: SearchMode, language: str) -> SearchMode:
        # An embedder that does not understand the query's language adds noise to the ranking, so such
        # a query is answered by BM25 alone.
        if requested != "bm25" and not self._embedder.understands(language):
            return "bm25"
        return requested

    def search(
        self, question: str, *, kb: str = "default", top_k: int = 5,
        mode: SearchMode | None = None, flt: SearchFilter | None = None,
    ) -> Retrieval:  # fmt: skip
        timings: dict[str, float] = {}
        language = detect_language(question)
        effective = self.effective_mode(mode or self._mode, language)
        vector = None
        if effective != "bm25":
            t = time.perf_counter()
            vector = self._embedder.embed([question], "query")[0]
            timings["embed_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        flt = flt or SearchFilter()
        if self._hidden_versions is not None:
            flt = flt.model_copy(update={"hidden_versions": list(self._hidden_versions(kb))})
        hits = self._store.search(kb, question, vector, mode=effective, limit=max(top_k, self._candidates), flt=flt)
        timings["search_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        sources = assemble_context(
            hits[:top_k], count_tokens=self._embedder.count_tokens, budget_tokens=self._context_tokens
        )
        timings["context_ms"] = (time.perf_counter() - t) * 1000
        return Retrieval(
            question=question, language=language, mode=effective, hits=hits[:top_k], sources=sources, timings=timings
        )
