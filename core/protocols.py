"""The Protocols each stage implements; pipelines take these, never the concrete classes.

Each has an in-memory fake under tests/fakes and one contract suite under tests/contracts that runs
against the fake and the real implementation alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, runtime_checkable

from core.types import (
    ChatMessage,
    Chunk,
    GenerationDelta,
    GenerationResult,
    ScoredChunk,
    SearchFilter,
    SearchMode,
    TextKind,
)


class EmbedderUnavailable(RuntimeError):
    """A remote embedding server could not be reached, failed, or did not answer in time."""


@runtime_checkable
class Embedder(Protocol):
    """Text → unit-length vectors. Loads its model (or reaches its server) when built, never on the first
    call. A backend that embeds on another server raises EmbedderUnavailable for any server-side failure."""

    @property
    def dimension(self) -> int: ...

    @property
    def languages(self) -> frozenset[str]:
        """ISO codes of the languages the model embeds meaningfully ("*": any)."""
        ...

    @property
    def max_seq_length(self) -> int:
        """Tokens the model reads; a longer text is cut, so chunks are sized below it."""
        ...

    def understands(self, language: str) -> bool:
        """Whether a query in this language gets a meaningful vector (else it is searched by BM25 alone)."""
        ...

    def embed(self, texts: Sequence[str], kind: TextKind) -> list[list[float]]: ...

    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class VectorStore(Protocol):
    """Chunks with their vectors, per knowledge base: written by ingestion, searched by the QueryPipeline."""

    def upsert(self, kb: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int: ...

    def flush(self, kb: str) -> None:
        """Make everything upserted so far searchable at full speed."""
        ...

    def delete_version(self, kb: str, doc_id: str, version: int) -> None: ...

    def update_access(self, kb: str, doc_id: str, version: int, acl_groups: Sequence[str], tags: Sequence[str]) -> int:
        """Replace the groups and tags of every chunk of one version, vectors untouched, and make the change
        searchable before returning; how many chunks were rewritten (0 for an unknown kb or version)."""
        ...

    def count(self, kb: str) -> int: ...

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
        """Best first; `vector` is required for dense and hybrid modes. An unknown kb has no hits."""
        ...

    def best_cosine(self, kb: str, vector: Sequence[float], chunk_ids: Sequence[str]) -> float | None:
        """The highest cosine between `vector` and these chunks' stored vectors (None for no chunks):
        an absolute relevance measure where fused scores have none."""
        ...

    def chunks_at(
        self, kb: str, doc_id: str, version: int, ordinals: Sequence[int], *, flt: SearchFilter
    ) -> list[Chunk]:
        """The chunks of one document version at these positions that `flt` lets through, in reading order
        (those that exist): a hit's neighbours, for small-to-big context."""
        ...


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]: ...


class RerankerUnavailable(RuntimeError):
    """The reranker cannot be loaded, or its service failed: retrieval ranks without it and says so."""


class GeneratorUnavailable(RuntimeError):
    """The model server could not be reached, failed, or did not answer in time: callers degrade, not crash."""


@runtime_checkable
class Generator(Protocol):
    """Chat completions from a model server. Raises GeneratorUnavailable for any server-side failure.

    `max_tokens` and `temperature` override the configured values for one request (None: configured)."""

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        pattern: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> GenerationResult:
        """`pattern`: a regex the output must match (constrained decoding), where the server supports it."""
        ...

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        pattern: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[GenerationDelta]: ...
