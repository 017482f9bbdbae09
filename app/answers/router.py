"""POST /ask: a grounded answer with citations, whole or streamed as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from app.access.deps import Asker
from app.answers.gate import Asking
from app.answers.models import AskRequest
from app.answers.service import Question
from core.types import Answer

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
                        _event("citations", ["answer", "citations", "sources", "grounded", "extractive", "sentences"]),
                        _event(
                            "done",
                            ["answer_id", "refused", "degraded", "extractive", "message", "usage", "timings"],
                        ),
                        _event("error", ["code", "message"]),
                    ]
                }
            }
        },
        "description": 'With "stream": true: `token` events, one `citations` event, then `done` (or `error`). '
        "When `citations` says `extractive: true`, its `answer` replaces the streamed text (the model's text "
        "had no supported claim: the answer quotes the sources).",
    }
}


@router.post("/ask", response_model=Answer, responses=_SSE_DOC)  # type: ignore[arg-type]
async def ask(request: Request, body: AskRequest, caller: Asker) -> Answer | Response:
    asking = Asking.of_request(request, caller)
    history = [m.chat() for m in body.history]
    await asking.admit(kb=body.kb, question=body.question, history=history)
    question = Question(
        text=body.question, access=caller.access, kb=body.kb, top_k=body.top_k, mode=body.mode, history=history,
        answer_mode=body.answer_mode,
    )  # fmt: skip
    if not body.stream:
        return await asking.answer(question)
    stream = asking.stream(question)

    async def sse() -> AsyncIterator[str]:
        async for event in stream.events:
            yield f"event: {event.name}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n"

    # The slot is held until the stream ends; the background task frees it also when the stream never started.
    return StreamingResponse(
        sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
        background=BackgroundTask(stream.release.release),
    )  # fmt: skip
