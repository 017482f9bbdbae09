"""POST /ask: a grounded answer with citations, whole or streamed as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from app.answering import Question, StreamEvent
from app.audit import Action, QuestionAudit
from app.auth.deps import Asker
from app.deps import ContainerDep
from app.schemas import AskRequest
from core.types import Answer

router = APIRouter(tags=["ask"])

_SSE_DOC = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": 'With "stream": true: `token` events, one `citations` event, then `done` (or `error`).',
    }
}


@router.post("/ask", response_model=Answer, responses=_SSE_DOC)  # type: ignore[arg-type]
async def ask(body: AskRequest, request: Request, container: ContainerDep, caller: Asker) -> Answer | Response:
    audit = QuestionAudit(request, Action.ask, kb=body.kb, question=body.question)
    caller.require_kb(body.kb)
    await audit.refuse_sensitive(container.sensitive, body.question, body.history)
    question = Question(
        text=body.question, access=caller.access, kb=body.kb, top_k=body.top_k, mode=body.mode, history=body.history
    )
    if not body.stream:
        answer = container.sensitive.screen(await container.answers.ask(question))
        await audit.answered(answer)
        return answer
    events = audit.streamed(container.sensitive.screen_stream(container.answers.stream(question)))
    return StreamingResponse(_sse(events), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _sse(events: AsyncIterator[StreamEvent]) -> AsyncIterator[str]:
    async for event in events:
        yield f"event: {event.name}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n"
