"""QueryPipeline: embed the question, search Milvus (dense, BM25 or hybrid), rerank, check relevance,
assemble the context."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from core.protocols import Embedder, Reranker, RerankerUnavailable, VectorStore
from core.text import detect_language
from core.tracing import stage
from core.types import Chunk, RelevanceThresholds, ScoredChunk, SearchFilter, SearchMode
from retrieval.context import Source, assemble_context
from retrieval.fusion import Candidates, fuse_candidates
from retrieval.relevance import Relevance, lexical_coverage

log = logging.getLogger(__name__)


@dataclass
class Retrieval:
    question: str
    language: str
    mode: SearchMode
    hits: list[ScoredChunk]
    sources: list[Source]
    timings: dict[str, float] = field(default_factory=dict)
    relevance: Relevance = field(default_factory=lambda: Relevance("none", None))
    # True when hits were found but none was relevant enough: the generator must refuse, not guess.
    no_relevant_context: bool = False
    reranked: bool = False
    # The standalone rewrite searched beside the question, when the question was a follow-up.
    rewrite: str | None = None


class QueryPipeline:
    def __init__(
        self,
        *,
        embedder: Embedder,
        store: VectorStore,
        default_mode: SearchMode = "hybrid",
        candidates: int = 30,
        context_tokens: int = 1200,
        reranker: Reranker | None = None,
        rerank_candidates: int = 30,
        rerank_wanted: bool = False,
        thresholds: RelevanceThresholds | None = None,
        count_tokens: Callable[[str], int] | None = None,
        hidden_versions: Callable[[str], Sequence[tuple[str, int]]] | None = None,
        language_thresholds: Mapping[str, RelevanceThresholds] | None = None,
        dense_by_language: bool = False,
        expand_chunks: int = 0,
    ) -> None:
        self._expand = expand_chunks
        # Asked per query: which (doc_id, version) pairs are mid-switch and must not be seen.
        self._hidden_versions = hidden_versions
        self._embedder = embedder
        self._store = store
        self._mode = default_mode
        self._candidates = candidates
        self._context_tokens = context_tokens
        self._reranker = reranker
        self._rerank_candidates = rerank_candidates
        # Settings asked for reranking but no model could be loaded: every answer says so.
        self._rerank_missing = rerank_wanted and reranker is None
        self._thresholds = thresholds or RelevanceThresholds.off()
        # Cosines have a scale per model and per language: thresholds calibrated per question language.
        self._language_thresholds = dict(language_thresholds or {})
        # Each language's chunks are embedded by its own model (retrieval/routed_embedder.py): a query's
        # vector is only comparable with its own language's chunks.
        self._dense_by_language = dense_by_language
        # The budget is in the generator's tokens; the embedder's tokenizer undercounts Chinese for
        # most LLMs (one [UNK] per character against two or three byte-level tokens).
        self._count_tokens = count_tokens or embedder.count_tokens

    def thresholds_for(self, language: str) -> RelevanceThresholds:
        """The refusal thresholds that apply to a question in `language`."""
        return self._language_thresholds.get(language, self._thresholds)

    @property
    def has_reranker(self) -> bool:
        return self._reranker is not None

    def effective_mode(self, requested: SearchMode, language: str) -> SearchMode:
        # An embedder that does not understand the query's language adds noise to the ranking, so such
        # a query is answered by BM25 alone.
        if requested != "bm25" and not self._embedder.understands(language):
            return "bm25"
        return requested

    def candidates(
        self, question: str, *, flt: SearchFilter, kb: str = "default", limit: int | None = None,
        mode: SearchMode | None = None, rerank: bool = True, vector: list[float] | None = None,
    ) -> Candidates:  # fmt: skip
        """Embed, search and (when a reranker is loaded and `rerank`) rerank: the ranked hits.

        `vector`: the question's query embedding when the caller has already computed it."""
        timings: dict[str, float] = {}
        language = detect_language(question)
        effective = self.effective_mode(mode or self._mode, language)
        limit = limit or self._candidates
        if effective == "bm25":
            vector = None
        elif vector is None:
            with stage(timings, "embed"):
                vector = self._embedder.embed([question], "query")[0]
        with stage(timings, "search"):
            if self._hidden_versions is not None:
                flt = flt.model_copy(update={"hidden_versions": list(self._hidden_versions(kb))})
            if self._dense_by_language:
                flt = flt.model_copy(update={"dense_language": language})
            hits = self._store.search(kb, question, vector, mode=effective, limit=max(limit, self._candidates), flt=flt)
            if self._hidden_versions is not None:
                hits = one_version_per_document(hits, set(self._hidden_versions(kb)))
        reranked = False
        if rerank and self._reranker is not None and hits:
            try:
                with stage(timings, "rerank"):
                    head = self._reranker.rerank(question, hits[: self._rerank_candidates], self._rerank_candidates)
            except RerankerUnavailable as exc:
                # A rerank service that is down costs the ranking, not the answer; and the answer says so.
                log.warning("%s; ranked without reranking", exc)
                timings["rerank_unavailable"] = 1.0
            else:
                hits = head + hits[self._rerank_candidates :]
                reranked = True
        elif rerank and self._rerank_missing:
            timings["rerank_unavailable"] = 1.0
        return Candidates(language, effective, hits[:limit], vector, timings, reranked)

    def relevance(self, kb: str, question: str, found: Candidates, top_k: int) -> Relevance:
        hits = found.hits[:top_k]
        if not hits:
            return Relevance("none", None)
        if found.reranked:
            return Relevance("rerank", max(h.score for h in hits))
        if found.vector is not None:
            if found.mode == "dense":
                return Relevance("cosine", max(h.score for h in hits))
            comparable = [h for h in hits if not self._dense_by_language or h.chunk.language == found.language]
            if comparable:
                ids = [h.chunk.chunk_id for h in comparable]
                return Relevance("cosine", self._store.best_cosine(kb, found.vector, ids))
            # Only the other language's chunks, found by their words: no cosine means anything here.
        return Relevance("lexical", lexical_coverage(question, [h.chunk.text for h in hits]))

    def search(
        self, question: str, *, flt: SearchFilter, kb: str = "default", top_k: int = 5,
        mode: SearchMode | None = None, rewrite: str | None = None,
    ) -> Retrieval:  # fmt: skip
        """`flt.access` is the caller's: there is no default, so forgetting it is an error, not "everyone".

        `rewrite`: the question made standalone from its conversation. It is searched beside the question
        as asked and the two rankings are fused, so a rewrite that went astray cannot take away what the
        question finds by itself; the context counts as relevant when it is relevant to either."""
        queries = [question] if not rewrite or rewrite.strip() == question.strip() else [rewrite, question]
        limit = max(top_k, self._candidates)
        embed_timings: dict[str, float] = {}
        vectors = self._embed_together(queries, mode, embed_timings) if len(queries) > 1 else {}
        founds = [self.candidates(q, kb=kb, limit=limit, mode=mode, flt=flt, vector=vectors.get(q)) for q in queries]
        # The answer's language is the question's, whatever language the conversation was in.
        found = founds[0] if len(founds) == 1 else replace(fuse_candidates(founds), language=founds[-1].language)
        timings = found.timings
        for name, value in embed_timings.items():
            timings[name] = timings.get(name, 0.0) + value
        hits = found.hits[:top_k]
        with stage(timings, "relevance"):
            pairs = zip(queries, founds, strict=True)
            judged = [self._judge(kb, q, replace(f, hits=found.hits), top_k) for q, f in pairs]
        relevance, no_relevant = next(((r, n) for r, n in judged if not n), judged[0])
        if no_relevant:
            log.info("no relevant context: best %s relevance %s", relevance.kind, relevance.value)
        with stage(timings, "context"):
            sources = [] if no_relevant else self.context(kb, hits, flt)
        return Retrieval(
            question=question, language=found.language, mode=found.mode, hits=hits, sources=sources,
            timings=timings, relevance=relevance, no_relevant_context=no_relevant, reranked=found.reranked,
            rewrite=queries[0] if len(queries) > 1 else None,
        )  # fmt: skip

    def context_gain(
        self, question: str, probe: str, *, flt: SearchFilter, kb: str = "default", top_k: int = 5,
        mode: SearchMode | None = None,
    ) -> float | None:  # fmt: skip
        """How much more relevant the best hits of `probe` (the question with the conversation before it)
        are than the question's own: None when the two are not measured alike (another relevance kind)."""
        queries = [probe, question]
        timings: dict[str, float] = {}
        vectors = self._embed_together(queries, mode, timings)
        limit = max(top_k, self._candidates)
        scored = []
        for q in queries:
            found = self.candidates(q, kb=kb, limit=limit, mode=mode, flt=flt, vector=vectors.get(q))
            scored.append(self.relevance(kb, q, found, top_k))
        with_context, alone = scored
        if with_context.kind != alone.kind or with_context.value is None:
            return None
        return with_context.value - (alone.value or 0.0)

    def _embed_together(
        self, queries: list[str], mode: SearchMode | None, timings: dict[str, float]
    ) -> dict[str, list[float]]:
        """The query embeddings of the queries that are searched densely, in one batch: one model call, not one
        a query."""
        dense = [q for q in queries if self.effective_mode(mode or self._mode, detect_language(q)) != "bm25"]
        if not dense:
            return {}
        with stage(timings, "embed"):
            return dict(zip(dense, self._embedder.embed(dense, "query"), strict=True))

    def _judge(self, kb: str, question: str, found: Candidates, top_k: int) -> tuple[Relevance, bool]:
        """How relevant the top hits are to `question`, and whether that is too little to answer from."""
        hits = found.hits[:top_k]
        relevance = self.relevance(kb, question, found, top_k)
        thresholds = self.thresholds_for(found.language)
        no_relevant = bool(hits) and relevance.below(thresholds.of(relevance.kind))
        if hits and not no_relevant and relevance.kind == "cosine" and thresholds.cosine_lexical > 0:
            coverage = lexical_coverage(question, [h.chunk.text for h in hits])
            no_relevant = coverage is None or coverage < thresholds.cosine_lexical
        return relevance, no_relevant

    def context(
        self, kb: str, hits: Sequence[ScoredChunk], flt: SearchFilter, *, expand: int | None = None
    ) -> list[Source]:
        """The numbered sources the model is given for these hits; `expand`: the configured small-to-big
        neighbours per side unless given (evaluation compares several)."""
        expand = self._expand if expand is None else expand

        def neighbours(chunk: Chunk, ordinals: Sequence[int]) -> list[Chunk]:
            # The caller's filter again: a neighbour is read with the same access as the hit it surrounds.
            return self._store.chunks_at(kb, chunk.doc_id, chunk.version, ordinals, flt=flt)

        return assemble_context(
            hits, count_tokens=self._count_tokens, budget_tokens=self._context_tokens, expand=expand,
            neighbours=neighbours,
        )  # fmt: skip


def one_version_per_document(hits: list[ScoredChunk], hidden_now: set[tuple[str, int]]) -> list[ScoredChunk]:
    """Hits of a document in two versions are settled by a second read of the registry, taken after the search.

    The hidden versions the store filtered by were read before the search ran; a version begun or published
    in between can reach the hits beside the one it replaces. Of such a document, the versions hidden now
    are dropped (the one still being written, or the one just replaced). A document found in one version only
    keeps it, even if it was replaced meanwhile: that is what the purge grace period is for."""
    versions: dict[str, set[int]] = {}
    for hit in hits:
        versions.setdefault(hit.chunk.doc_id, set()).add(hit.chunk.version)
    mixed = {doc_id for doc_id, seen in versions.items() if len(seen) > 1}
    if not mixed:
        return hits
    return [h for h in hits if h.chunk.doc_id not in mixed or (h.chunk.doc_id, h.chunk.version) not in hidden_now]
