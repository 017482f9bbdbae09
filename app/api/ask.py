"""POST /ask: a grounded answer with citations, whole or streamed as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from app.answering import Question, StreamEvent
from app.audit import Action, QuestionAudit
from app.auth.deps import Asker, client_ip
from app.auth.principal import Principal
from app.deps import ContainerDep
from app.limits import AnswerSlots, answer_slots, check_question, unless_disconnected
from app.ratelimit import RateLimiter, rate_limiter
from app.schemas import AskRequest
from core.types import Answer, Usage

router = APIRouter(tags=["ask"])


def _event(name: str, required: list[str]) -> dict[str, object]:
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": name},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"type": "object", "required": required},
            },
        },
    }


# The schema of a text/event-stream response describes one event (how OpenAPI 3.1 tools read it): each
# event's name and the JSON object its data line holds.
_SSE_DOC = {
    200: {
        "content": {
            "text/event-stream": {
                "schema": {
                    "oneOf": [
                        _event("token", ["text"]),
                        _event("citations", ["answer", "citations", "sources", "grounded", "sentences"]),
                        _event("done", ["answer_id", "refused", "degraded", "message", "usage", "timings"]),
                        _event("error", ["code", "message"]),
                    ]
                }
            }
        },
        "description": 'With "stream": true: `token` events, one `citations` event, then `done` (or `error`).',
    }
}


@router.post("/ask", response_model=Answer, responses=_SSE_DOC)  # type: ignore[arg-type]
async def ask(
    request: Request,
    body: AskRequest,
    *,
    container: ContainerDep,
    caller: Asker,
    limiter: Annotated[RateLimiter, Depends(rate_limiter)],
    slots: Annotated[AnswerSlots, Depends(answer_slots)],
) -> Answer | Response:
    audit = QuestionAudit(request, Action.ask, kb=body.kb, question=body.question)
    caller.require_kb(body.kb)
    history = [m.chat() for m in body.history]
    check_question(body.question, history, request.app.state.settings.limits)
    await audit.refuse_sensitive(container.sensitive, body.question, history)
    ip = client_ip(request)
    await limiter.require_tokens_async(caller, ip)
    question = Question(
        text=body.question, access=caller.access, kb=body.kb, top_k=body.top_k, mode=body.mode, history=history
    )
    slot = slots.take()
    metrics = container.metrics
    if not body.stream:
        with slot, metrics.answer_in_flight():
            answer = container.sensitive.screen(await unless_disconnected(request, container.answers.ask(question)))
        await limiter.charge_usage(caller, ip, answer.usage)
        metrics.observe_answer_model(answer, kb=body.kb, key=caller.name)
        await audit.answered(answer)
        return answer

    events = audit.streamed(
        container.sensitive.screen_stream(_charged(container.answers.stream(question), limiter, caller, ip))
    )

    async def sse() -> AsyncIterator[str]:
        # In flight until the stream ends or the client leaves (the generator is closed then).
        with slot, metrics.answer_in_flight():
            observe = metrics.stream_observer(kb=body.kb, key=caller.name)
            async for event in events:
                observe(event.name, event.data)
                yield f"event: {event.name}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n"

    # The slot is held until the stream ends; the background task frees it also when the stream never started.
    return StreamingResponse(
        sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
        background=BackgroundTask(slot.release),
    )  # fmt: skip


async def _charged(
    events: AsyncGenerator[StreamEvent], limiter: RateLimiter, caller: Principal, ip: str | None
) -> AsyncGenerator[StreamEvent]:
    async for event in events:
        if event.name == "done":  # charged before the client can hang up on the last event
            await limiter.charge_usage(caller, ip, Usage.model_validate(event.data["usage"]))
        yield event
