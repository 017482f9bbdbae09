"""Contracts between kb's stages: the data that flows and the Protocols each stage implements."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

TextKind = Literal["query", "passage"]
SearchMode = Literal["dense", "bm25", "hybrid"]


class Chunk(BaseModel):
    chunk_id: str
    doc_id: str
    version: int = 1
    kb: str = "default"
    ordinal: int = 0
    text: str
    title: str = ""
    source: str = ""
    page: int | None = None
    section: str = ""  # heading path, "Chapter > Section"
    category: str = ""  # unstructured's element category (NarrativeText, Table, ListItem, ...)
    acl_groups: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    token_count: int = 0

    @staticmethod
    def make_id(doc_id: str, version: int, ordinal: int) -> str:
        # Stable across re-runs so that re-ingesting the same version overwrites instead of duplicating.
        return hashlib.sha256(f"{doc_id}\x00{version}\x00{ordinal}".encode()).hexdigest()[:32]


class ScoredChunk(BaseModel):
    chunk: Chunk
    score: float
    # Rank-fused scores are not comparable with raw similarities; record where the number came from.
    score_kind: Literal["cosine", "bm25", "rrf", "weighted", "rerank"] = "cosine"


class SearchFilter(BaseModel):
    """Typed filter values; the store alone turns them into a Milvus expression."""

    doc_ids: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    # None means no ACL restriction (trusted internal caller); a list restricts to chunks readable by
    # any of these groups or by everyone (empty acl_groups on the chunk).
    acl_groups: list[str] | None = None
    # (doc_id, version) pairs the registry says readers must not see: versions being indexed, or retired
    # ones whose chunks are not purged yet.
    hidden_versions: list[tuple[str, int]] = Field(default_factory=list)


class Citation(BaseModel):
    index: int
    doc_id: str
    title: str
    source: str
    page: int | None = None
    chunk_id: str
    score: float
    snippet: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class SentenceGrounding(BaseModel):
    """One sentence of an answer and the valid sources it cites; grounded when it cites at least one."""

    text: str
    citations: list[int] = Field(default_factory=list)
    grounded: bool = False


class Answer(BaseModel):
    answer: str
    # The sources the answer text cites ([n] markers that name a real source), in source order.
    citations: list[Citation] = Field(default_factory=list)
    # Every numbered passage the model was given, best first: what an admin checks when a citation is off.
    sources: list[Citation] = Field(default_factory=list)
    refused: bool = False
    degraded: bool = False
    grounded: bool = False
    # Per sentence, so that a UI can mark the sentences that cite nothing (empty for refusals and
    # degraded answers, which are not model text).
    sentences: list[SentenceGrounding] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    timings: dict[str, float] = Field(default_factory=dict, description="milliseconds per stage")
    answer_id: str = ""
    message: str = ""


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


@runtime_checkable
class Embedder(Protocol):
    @property
    def dimension(self) -> int: ...

    @property
    def languages(self) -> frozenset[str]:
        """ISO codes of the languages the model embeds meaningfully."""
        ...

    def embed(self, texts: Sequence[str], kind: TextKind) -> list[list[float]]: ...

    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class VectorStore(Protocol):
    def upsert(self, kb: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int: ...

    def search(
        self,
        kb: str,
        query: str,
        vector: Sequence[float] | None,
        *,
        mode: SearchMode,
        limit: int,
        flt: SearchFilter,
    ) -> list[ScoredChunk]: ...

    def delete_document(self, kb: str, doc_id: str, *, keep_version: int | None = None) -> None: ...


@runtime_checkable
class Reranker(Protocol):
    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]: ...


class GenerationResult(BaseModel):
    text: str
    usage: Usage = Field(default_factory=Usage)


class GenerationDelta(BaseModel):
    """One streamed piece: new text, or (last) the token usage of the whole completion."""

    text: str = ""
    usage: Usage | None = None


@runtime_checkable
class Generator(Protocol):
    async def generate(self, messages: Sequence[ChatMessage], *, pattern: str | None = None) -> GenerationResult:
        """`pattern`: a regex the output must match (constrained decoding), where the server supports it."""
        ...

    def stream(
        self, messages: Sequence[ChatMessage], *, pattern: str | None = None
    ) -> AsyncIterator[GenerationDelta]: ...
