"""Answers kept by id, and people's feedback on them (thumbs up or down, a comment, the wrong passages).

Every answer a key gets is kept for `feedback.keep_answers_days` in the `answers` table, private to
that key: feedback names an answer by its id, and the feedback row copies what was asked and answered
(question, answer, citations, model, a digest of the settings that shaped it), so that it outlives the
answer and can be replayed as a QA evaluation set (`kb eval qa`). Answers past their time are deleted
now and then, as new ones are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any, Literal

from sqlalchemy import JSON, Boolean, DateTime, String, Text, delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from app.db.base import AppBase, create_app_tables
from app.ops.settings_view import masked as masked_settings
from app.settings import Settings
from core.types import Answer

log = logging.getLogger(__name__)

Rating = Literal["up", "down"]
MAX_COMMENT = 4000
MAX_WRONG_CHUNKS = 100
MAX_PAGE = 1000
# Old answers are deleted at most this often, by whichever call keeps a new one.
_PURGE_EVERY_S = 3600.0


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    # SQLite returns naive datetimes even for timezone-aware columns.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class AnswerRow(AppBase):
    __tablename__ = "answers"

    answer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(32), default="")
    key_name: Mapped[str] = mapped_column(String(128), default="")
    kb: Mapped[str] = mapped_column(String(64), default="")
    question: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[str] = mapped_column(Text, default="")
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    refused: Mapped[bool] = mapped_column(Boolean, default=False)
    degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str] = mapped_column(String(256), default="")
    settings_digest: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)


class FeedbackRow(AppBase):
    __tablename__ = "feedback"

    feedback_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    answer_id: Mapped[str] = mapped_column(String(64), index=True)
    rating: Mapped[str] = mapped_column(String(8), index=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    wrong_chunk_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    kb: Mapped[str] = mapped_column(String(64), default="", index=True)
    key_id: Mapped[str] = mapped_column(String(32), default="")
    key_name: Mapped[str] = mapped_column(String(128), default="")
    question: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[str] = mapped_column(Text, default="")
    citations: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    refused: Mapped[bool] = mapped_column(Boolean, default=False)
    degraded: Mapped[bool] = mapped_column(Boolean, default=False)
    model: Mapped[str] = mapped_column(String(256), default="")
    settings_digest: Mapped[str] = mapped_column(String(64), default="")
    answered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)


@dataclass(frozen=True)
class KeptAnswer:
    answer_id: str
    key_id: str
    key_name: str
    kb: str
    question: str
    answer: str
    citations: list[dict[str, Any]] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    refused: bool = False
    degraded: bool = False

    @classmethod
    def of(cls, answer: Answer, *, question: str, kb: str, key_id: str, key_name: str) -> KeptAnswer:
        return cls(
            answer_id=answer.answer_id, key_id=key_id, key_name=key_name, kb=kb, question=question,
            answer=answer.answer, citations=[c.model_dump() for c in answer.citations],
            sources=[c.model_dump() for c in answer.sources], refused=answer.refused, degraded=answer.degraded,
        )  # fmt: skip


@dataclass(frozen=True)
class FeedbackEntry:
    feedback_id: str
    answer_id: str
    rating: str
    comment: str
    wrong_chunk_ids: list[str]
    kb: str
    key_name: str
    question: str
    answer: str
    citations: list[dict[str, Any]]
    refused: bool
    degraded: bool
    model: str
    settings_digest: str
    answered_at: datetime
    created_at: datetime

    @classmethod
    def of(cls, row: FeedbackRow) -> FeedbackEntry:
        return cls(
            feedback_id=row.feedback_id, answer_id=row.answer_id, rating=row.rating, comment=row.comment,
            wrong_chunk_ids=list(row.wrong_chunk_ids or []), kb=row.kb, key_name=row.key_name, question=row.question,
            answer=row.answer, citations=list(row.citations or []), refused=row.refused, degraded=row.degraded,
            model=row.model, settings_digest=row.settings_digest, answered_at=_utc(row.answered_at),
            created_at=_utc(row.created_at),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["answered_at"] = self.answered_at.isoformat()
        data["created_at"] = self.created_at.isoformat()
        return data

    def qa_row(self) -> dict[str, Any]:
        """The entry as a line of a QA set's qa.jsonl (evaluation/datasets.py: id, question, answers, doc,
        answerable), with what was said about it alongside. A liked answer is the reference answer and its
        first cited document the gold one; a disliked one gives only the question to ask again."""
        liked = self.rating == "up" and not self.refused and not self.degraded
        cited = [str(c.get("doc_id", "")) for c in self.citations if c.get("doc_id")]
        return {
            "id": self.feedback_id,
            "question": self.question,
            "answers": [self.answer] if liked else [],
            "doc": PurePosixPath(cited[0]).name if liked and cited else "",
            "answerable": True,
            "kb": self.kb,
            "rating": self.rating,
            "comment": self.comment,
            "given_answer": self.answer,
            "cited_docs": list(dict.fromkeys(cited)),
            "wrong_chunk_ids": self.wrong_chunk_ids,
            "model": self.model,
            "settings_digest": self.settings_digest,
            "answer_id": self.answer_id,
            "created_at": self.created_at.isoformat(),
        }


def settings_digest(settings: Settings) -> str:
    """A short hash of the settings that shape an answer (models, chunking, retrieval, decoding): feedback
    given under different settings is told apart without storing them."""
    masked = masked_settings(settings)
    shaping = {name: masked[name] for name in ("embedding", "reranker", "retrieval", "llm", "ingest")}
    for volatile in ("effective_base_url", "base_url", "host", "port", "timeout_s", "startup_timeout_s"):
        shaping["llm"].pop(volatile, None)
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeedbackLog:
    def __init__(
        self, engine: Engine, *, keep_answers_days: float, model: str, digest: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        create_app_tables(engine, AnswerRow, FeedbackRow)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._keep = timedelta(days=keep_answers_days)
        self.model = model
        self.digest = digest
        self._clock = clock
        self._last_purge: float | None = None
        self._purging = threading.Lock()

    @property
    def keeps_answers(self) -> bool:
        return self._keep > timedelta(0)

    def keep_answer(self, kept: KeptAnswer) -> None:
        if not self.keeps_answers or not kept.answer_id:
            return
        row = AnswerRow(
            answer_id=kept.answer_id[:64], key_id=kept.key_id[:32], key_name=kept.key_name[:128], kb=kept.kb[:64],
            question=kept.question, answer=kept.answer, citations=kept.citations, sources=kept.sources,
            refused=kept.refused, degraded=kept.degraded, model=self.model[:256], settings_digest=self.digest,
            created_at=_now(),
        )  # fmt: skip
        with self._sessions() as session, session.begin():
            session.merge(row)
        self._purge_now_and_then()

    def answer(self, answer_id: str, *, key_id: str) -> AnswerRow | None:
        """The answer with that id if it was given to `key_id` and is still kept; None otherwise (the same
        for an unknown, expired or someone else's answer)."""
        if not self.keeps_answers or not key_id:
            return None
        with self._sessions() as session:
            row = session.get(AnswerRow, answer_id[:64])
        if row is None or row.key_id != key_id or _utc(row.created_at) < _now() - self._keep:
            return None
        return row

    def add(self, answer: AnswerRow, *, rating: Rating, comment: str, wrong_chunk_ids: Sequence[str]) -> str:
        feedback_id = uuid.uuid4().hex
        row = FeedbackRow(
            feedback_id=feedback_id, answer_id=answer.answer_id, rating=rating, comment=comment[:MAX_COMMENT],
            wrong_chunk_ids=list(wrong_chunk_ids)[:MAX_WRONG_CHUNKS], kb=answer.kb, key_id=answer.key_id,
            key_name=answer.key_name, question=answer.question, answer=answer.answer, citations=answer.citations,
            refused=answer.refused, degraded=answer.degraded, model=answer.model,
            settings_digest=answer.settings_digest, answered_at=answer.created_at, created_at=_now(),
        )  # fmt: skip
        with self._sessions() as session, session.begin():
            session.add(row)
        return feedback_id

    def query(
        self, *, kbs: Sequence[str] | None, since: datetime | None = None, rating: Rating | None = None,
        limit: int = 100, offset: int = 0,
    ) -> tuple[list[FeedbackEntry], int]:  # fmt: skip
        """Feedback oldest first, of the knowledge bases `kbs` (None: all), with how many match."""
        query = select(FeedbackRow)
        if kbs is not None:
            query = query.where(FeedbackRow.kb.in_(list(kbs)))
        if since is not None:
            query = query.where(FeedbackRow.created_at >= since)
        if rating is not None:
            query = query.where(FeedbackRow.rating == rating)
        with self._sessions() as session:
            total = int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)
            page = query.order_by(FeedbackRow.created_at, FeedbackRow.feedback_id).limit(min(limit, MAX_PAGE))
            rows = session.scalars(page.offset(offset))
            return [FeedbackEntry.of(r) for r in rows], total

    def export(
        self, *, kbs: Sequence[str] | None, since: datetime | None = None, rating: Rating | None = None
    ) -> Iterator[FeedbackEntry]:
        """Every matching entry, read a page at a time."""
        offset = 0
        while True:
            entries, _ = self.query(kbs=kbs, since=since, rating=rating, limit=MAX_PAGE, offset=offset)
            yield from entries
            if len(entries) < MAX_PAGE:
                return
            offset += MAX_PAGE

    def purge(self) -> int:
        """Delete answers kept longer than configured; how many."""
        cutoff = _now() - self._keep
        with self._sessions() as session, session.begin():
            gone = session.execute(delete(AnswerRow).where(AnswerRow.created_at < cutoff))
        return int(gone.rowcount or 0)  # type: ignore[attr-defined]

    def _purge_now_and_then(self) -> None:
        moment = self._clock()
        if self._last_purge is not None and moment - self._last_purge < _PURGE_EVERY_S:
            return
        if not self._purging.acquire(blocking=False):
            return
        try:
            self._last_purge = moment
            removed = self.purge()
            if removed:
                log.info("deleted %d answers kept longer than %s", removed, self._keep)
        except Exception:  # the answer is kept; the purge is tried again later
            log.warning("deleting old answers failed", exc_info=True)
        finally:
            self._purging.release()
