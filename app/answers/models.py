"""HTTP protocol models (kept apart from the code that serves them)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from core.names import KB_NAME_PATTERN
from core.types import Answer, AnswerMode, ChatMessage, Citation, SearchMode
from retrieval.pipeline import Retrieval


class RetrievalScope(BaseModel):
    """Where and how to search: shared by every request that retrieves."""

    # Declared as a pattern (not only checked) so that the OpenAPI schema tells clients the rule.
    kb: str = Field("default", pattern=KB_NAME_PATTERN, description="1-64 letters, digits or underscores")
    top_k: int | None = Field(None, ge=1, le=50)
    mode: SearchMode | None = None


class HistoryMessage(BaseModel):
    """An earlier turn of the conversation. Only the server writes system messages."""

    role: Literal["user", "assistant"]
    content: str = Field(description="at most limits.max_message_chars characters (4000 by default)")

    def chat(self) -> ChatMessage:
        return ChatMessage(role=self.role, content=self.content)


class AskRequest(RetrievalScope):
    # The maxima are settings (limits.*), checked when the request is served; the descriptions name them.
    question: str = Field(
        min_length=1, description="at most limits.max_question_chars characters with the history (4000 by default)"
    )
    history: list[HistoryMessage] = Field(
        default_factory=list, description="at most limits.max_history_messages messages (20 by default)"
    )
    answer_mode: AnswerMode | None = Field(
        None,
        description="generative: the model's text; extractive: sentences quoted from the sources (no model "
        "call); auto: the model's text when a sentence of it is supported by what it cites, else quotes. "
        "Default: the server's llm.answer_mode.",
    )
    stream: bool = False

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question must not be blank")
        return value


class SearchRequest(RetrievalScope):
    query: str = Field(min_length=1, description="at most limits.max_question_chars characters (4000 by default)")


class SearchHit(BaseModel):
    rank: int
    score: float
    score_kind: str
    doc_id: str
    title: str
    source: str
    page: int | None
    section: str
    chunk_id: str
    text: str


class SearchResponse(BaseModel):
    query: str
    mode: SearchMode
    language: str
    hits: list[SearchHit]
    timings: dict[str, float]

    @classmethod
    def from_retrieval(cls, query: str, retrieval: Retrieval) -> SearchResponse:
        hits = [
            SearchHit(
                rank=i + 1,
                score=h.score,
                score_kind=h.score_kind,
                doc_id=h.chunk.doc_id,
                title=h.chunk.title,
                source=h.chunk.source,
                page=h.chunk.page,
                section=h.chunk.section,
                chunk_id=h.chunk.chunk_id,
                text=h.chunk.text,
            )
            for i, h in enumerate(retrieval.hits)
        ]
        return cls(query=query, mode=retrieval.mode, language=retrieval.language, hits=hits, timings=retrieval.timings)


class Health(BaseModel):
    status: str


class ModelServerInfo(BaseModel):
    base_url: str
    model: str
    max_tokens: int


class ReadinessStatus(BaseModel):
    """/readyz: `ready`, `degraded` (answers fall back to extractive ones, or queued jobs wait) or
    `unavailable` (503: the database, Milvus or the embedder is down). The rest is for admins only."""

    status: Literal["ready", "degraded", "unavailable"]
    components: dict[str, Literal["up", "down"]] | None = Field(
        None, description="database, milvus, embedder, llm and (when the API runs one) worker; admins only"
    )
    llm: ModelServerInfo | None = Field(None, description="the model server's settings; admins only")


__all__ = [
    "Answer", "AskRequest", "Citation", "Health", "HistoryMessage", "ReadinessStatus", "SearchHit", "SearchRequest",
    "SearchResponse",
]  # fmt: skip
