"""POST /ask: a grounded answer with citations, whole or streamed as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from app.answering import Question
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
async def ask(body: AskRequest, container: ContainerDep, caller: Asker) -> Answer | Response:
    caller.require_kb(body.kb)
    question = Question(
        text=body.question, access=caller.access, kb=body.kb, top_k=body.top_k, mode=body.mode, history=body.history
    )
    metrics = container.metrics
    if not body.stream:
        with metrics.answer_in_flight():
            answer = await container.answers.ask(question)
        metrics.observe_answer_model(answer, kb=body.kb, key=caller.name)
        return answer

    async def events() -> AsyncIterator[str]:
        # In flight until the stream ends or the client leaves (the generator is closed then).
        with metrics.answer_in_flight():
            observe = metrics.stream_observer(kb=body.kb, key=caller.name)
            async for event in container.answers.stream(question):
                observe(event.name, event.data)
                yield f"event: {event.name}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
