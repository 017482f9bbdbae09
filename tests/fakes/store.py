"""FakeVectorStore: MilvusStore's behaviour in a few dictionaries (dense cosine, BM25, weighted or RRF
fusion, the same filter semantics as retrieval.store.build_filter)."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from core.types import Chunk, ScoredChunk, SearchFilter, SearchMode
from retrieval.store import StoreError
from tests.fakes._text import cosine, terms

_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_BM25_K1 = 1.2
_BM25_B = 0.75


@dataclass
class _Row:
    chunk: Chunk
    vector: list[float]
    terms: Counter[str]


@dataclass
class SearchCallRecord:
    kb: str
    query: str
    mode: SearchMode
    limit: int
    flt: SearchFilter


def visible(chunk: Chunk, flt: SearchFilter) -> bool:
    """build_filter's expression, evaluated in Python: every field of the filter restricts."""
    if flt.doc_ids and chunk.doc_id not in flt.doc_ids:
        return False
    if flt.tags and not set(chunk.tags) & set(flt.tags):
        return False
    # Fail closed, as build_filter: a chunk without groups is readable by unrestricted access only.
    if not flt.access.can_read(chunk.acl_groups):
        return False
    return (chunk.doc_id, chunk.version) not in {(d, int(v)) for d, v in flt.hidden_versions}


@dataclass
class FakeVectorStore:
    """Per-knowledge-base rows in memory. Writes are searchable at once (`flush` only counts calls)."""

    dimension: int | None = None
    fusion: Literal["weighted", "rrf"] = "weighted"
    dense_weight: float = 0.3
    rrf_k: int = 60
    searches: list[SearchCallRecord] = field(default_factory=list)
    flushes: int = 0
    _kbs: dict[str, dict[str, _Row]] = field(default_factory=dict)

    def _check_name(self, kb: str) -> None:
        if not _NAME_OK.match(f"kb_{kb}"):
            raise StoreError(f"invalid knowledge base name {kb!r}: use letters, digits and underscores")

    def upsert(self, kb: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int:
        self._check_name(kb)
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        rows = self._kbs.setdefault(kb, {})
        for chunk, vector in zip(chunks, vectors, strict=True):
            if self.dimension is not None and len(vector) != self.dimension:
                raise ValueError(f"vector of {len(vector)} dimensions for a {self.dimension}-dimensional store")
            stored = chunk.model_copy(update={"kb": kb}, deep=True)
            rows[chunk.chunk_id] = _Row(stored, [float(x) for x in vector], Counter(terms(chunk.text)))
        return len(chunks)

    def flush(self, kb: str) -> None:
        self._check_name(kb)
        self.flushes += 1

    def delete_version(self, kb: str, doc_id: str, version: int) -> None:
        rows = self._kbs.get(kb, {})
        for chunk_id in [i for i, r in rows.items() if (r.chunk.doc_id, r.chunk.version) == (doc_id, version)]:
            del rows[chunk_id]

    def update_access(self, kb: str, doc_id: str, version: int, acl_groups: Sequence[str], tags: Sequence[str]) -> int:
        self._check_name(kb)
        rows = [r for r in self._kbs.get(kb, {}).values() if (r.chunk.doc_id, r.chunk.version) == (doc_id, version)]
        for row in rows:
            row.chunk = row.chunk.model_copy(update={"acl_groups": list(acl_groups), "tags": list(tags)})
        return len(rows)

    def count(self, kb: str) -> int:
        self._check_name(kb)
        return len(self._kbs.get(kb, {}))

    def chunks(self, kb: str) -> list[Chunk]:
        """Every stored chunk of a knowledge base (for assertions), in document, version, reading order."""
        rows = self._kbs.get(kb, {}).values()
        return sorted((r.chunk for r in rows), key=lambda c: (c.doc_id, c.version, c.ordinal))

    def search(
        self,
        kb: str,
        query: str,
        vector: Sequence[float] | None,
        *,
        mode: SearchMode,
        limit: int,
        flt: SearchFilter,
    ) -> list[ScoredChunk]:
        self._check_name(kb)
        if mode in ("dense", "hybrid") and vector is None:
            raise ValueError(f"mode {mode} needs a query vector")
        self.searches.append(SearchCallRecord(kb, query, mode, limit, flt))
        rows = [r for r in self._kbs.get(kb, {}).values() if visible(r.chunk, flt)]
        if mode == "bm25":
            return [self._hit(r, s, "bm25") for r, s in self._bm25(kb, query, rows)[:limit]]
        assert vector is not None
        dense = sorted(((r, cosine(vector, r.vector)) for r in rows), key=lambda p: -p[1])[:limit]
        if mode == "dense":
            return [self._hit(r, s, "cosine") for r, s in dense]
        sparse = self._bm25(kb, query, rows)[:limit]
        fused: dict[str, float] = {}
        if self.fusion == "rrf":
            for ranked in (dense, sparse):
                for rank, (r, _) in enumerate(ranked, start=1):
                    fused[r.chunk.chunk_id] = fused.get(r.chunk.chunk_id, 0.0) + 1.0 / (self.rrf_k + rank)
        else:
            # Each side scaled to 0-1 as Milvus' WeightedRanker(norm_score=True) does, then weighed.
            for r, s in dense:
                fused[r.chunk.chunk_id] = self.dense_weight * (1.0 + s) / 2.0
            for r, s in sparse:
                scaled = (1.0 - self.dense_weight) * 2.0 * math.atan(s) / math.pi
                fused[r.chunk.chunk_id] = fused.get(r.chunk.chunk_id, 0.0) + scaled
        by_id = {r.chunk.chunk_id: r for r in rows}
        best = sorted(fused.items(), key=lambda p: -p[1])[:limit]
        return [self._hit(by_id[i], s, self.fusion) for i, s in best]

    def best_cosine(self, kb: str, vector: Sequence[float], chunk_ids: Sequence[str]) -> float | None:
        rows = self._kbs.get(kb, {})
        found = [cosine(vector, rows[i].vector) for i in chunk_ids if i in rows]
        return max(found) if found else None

    def chunks_at(
        self, kb: str, doc_id: str, version: int, ordinals: Sequence[int], *, flt: SearchFilter
    ) -> list[Chunk]:
        wanted = set(ordinals)
        found = [
            r.chunk.model_copy(deep=True)
            for r in self._kbs.get(kb, {}).values()
            if (r.chunk.doc_id, r.chunk.version) == (doc_id, version)
            and r.chunk.ordinal in wanted
            and visible(r.chunk, flt)
        ]
        return sorted(found, key=lambda c: c.ordinal)

    def _bm25(self, kb: str, query: str, rows: Sequence[_Row]) -> list[tuple[_Row, float]]:
        """Okapi BM25 with statistics over the whole knowledge base (filters narrow the hits, not the IDF);
        only rows that contain a query term are hits."""
        wanted = set(terms(query))
        everything = list(self._kbs.get(kb, {}).values())
        if not wanted or not everything:
            return []
        avg_len = sum(sum(r.terms.values()) for r in everything) / len(everything) or 1.0
        scored: list[tuple[_Row, float]] = []
        for row in rows:
            length = sum(row.terms.values())
            score = 0.0
            for term in wanted:
                tf = row.terms.get(term, 0)
                if not tf:
                    continue
                df = sum(1 for r in everything if term in r.terms)
                idf = math.log(1.0 + (len(everything) - df + 0.5) / (df + 0.5))
                score += idf * tf * (_BM25_K1 + 1) / (tf + _BM25_K1 * (1 - _BM25_B + _BM25_B * length / avg_len))
            if score > 0:
                scored.append((row, score))
        return sorted(scored, key=lambda p: -p[1])

    @staticmethod
    def _hit(row: _Row, score: float, kind: Literal["cosine", "bm25", "rrf", "weighted"]) -> ScoredChunk:
        return ScoredChunk(chunk=row.chunk.model_copy(deep=True), score=score, score_kind=kind)
