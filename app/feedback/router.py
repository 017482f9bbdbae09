"""POST /feedback: thumbs up or down on an answer; GET /admin/feedback: list it, or export it as a QA set.

Feedback names an answer by the `answer_id` every answer carries. Answers are private to the key that
asked: another key's answer id is as unknown as one never given, or one kept past
`feedback.keep_answers_days`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field, field_validator

from app.access.deps import Auditor, FeedbackGiver
from app.access.principal import ALL_KBS
from app.audit.trail import Action, audit_request, note_kb
from app.deps import ContainerDep
from app.errors import NotFound
from app.feedback.service import MAX_COMMENT, MAX_PAGE, MAX_WRONG_CHUNKS, Rating
from app.ops.durations import parse_moment

router = APIRouter(tags=["feedback"])


class FeedbackIn(BaseModel):
    answer_id: str = Field(min_length=1, max_length=64)
    rating: Rating
    comment: str = Field("", max_length=MAX_COMMENT)
    wrong_chunk_ids: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list, max_length=MAX_WRONG_CHUNKS, description="chunk ids of passages that were wrong"
    )


class FeedbackCreated(BaseModel):
    feedback_id: str


class FeedbackParams(BaseModel):
    since: datetime | None = Field(None, description="An ISO time (UTC unless it says) or a duration ago: 7d")
    rating: Rating | None = None
    kb: str | None = Field(None, max_length=64)
    format: Literal["json", "jsonl"] = Field(
        "json", description="json: a page of entries; jsonl: every match, one QA-set line each (kb eval qa)"
    )
    limit: int = Field(100, ge=1, le=MAX_PAGE)
    offset: int = Field(0, ge=0, le=1_000_000_000)

    @field_validator("since", mode="before")
    @classmethod
    def _moment(cls, value: object) -> object:
        return parse_moment(value) if isinstance(value, str) else value


class FeedbackPage(BaseModel):
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


@router.post("/feedback", status_code=status.HTTP_201_CREATED, response_model=FeedbackCreated)
async def give_feedback(
    request: Request, body: FeedbackIn, container: ContainerDep, caller: FeedbackGiver
) -> FeedbackCreated:
    """Rate an answer this key was given."""
    log = container.feedback
    answer = await to_thread.run_sync(partial(log.answer, body.answer_id, key_id=caller.key_id))
    if answer is None or not caller.may_use(answer.kb):
        raise NotFound(f"no answer {body.answer_id!r} to give feedback on (unknown, expired or not yours)")
    note_kb(request, answer.kb)
    feedback_id = await to_thread.run_sync(
        partial(log.add, answer, rating=body.rating, comment=body.comment, wrong_chunk_ids=body.wrong_chunk_ids)
    )
    container.metrics.observe_feedback(body.rating)
    await audit_request(
        request, Action.feedback, kb=answer.kb, target=answer.answer_id, status=201,
        detail={"feedback_id": feedback_id, "rating": body.rating, "wrong_chunks": len(body.wrong_chunk_ids)},
    )  # fmt: skip
    return FeedbackCreated(feedback_id=feedback_id)


_EXPORT_DOC = {
    200: {
        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
        "description": "With format=jsonl: one qa.jsonl line per entry (id, question, answers, doc, answerable, "
        "and rating, comment, given_answer, cited_docs, wrong_chunk_ids...).",
    }
}


@router.get("/admin/feedback", response_model=FeedbackPage, responses=_EXPORT_DOC)  # type: ignore[arg-type]
def list_feedback(
    request: Request, params: Annotated[FeedbackParams, Query()], container: ContainerDep, caller: Auditor
) -> FeedbackPage | Response:
    """Feedback oldest first, of the knowledge bases the key is granted."""
    if params.kb is not None:
        note_kb(request, params.kb)
        caller.require_kb(params.kb)
        kbs: list[str] | None = [params.kb]
    else:
        kbs = None if ALL_KBS in caller.kbs else list(caller.kbs)
    log = container.feedback
    if params.format == "jsonl":

        def lines() -> Iterator[str]:
            for entry in log.export(kbs=kbs, since=params.since, rating=params.rating):
                yield json.dumps(entry.qa_row(), ensure_ascii=False) + "\n"

        return StreamingResponse(
            lines(), media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="feedback-qa.jsonl"'},
        )  # fmt: skip
    entries, total = log.query(
        kbs=kbs, since=params.since, rating=params.rating, limit=params.limit, offset=params.offset
    )
    return FeedbackPage(items=[e.as_dict() for e in entries], total=total, limit=params.limit, offset=params.offset)
