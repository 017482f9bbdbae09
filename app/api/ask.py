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
async def ask(body: AskRequest, container: ContainerDep, caller: Asker) -> Answer | Response:
    caller.require_kb(body.kb)
    question = Question(
        text=body.question, access=caller.access, kb=body.kb, top_k=body.top_k, mode=body.mode, history=body.history
    )
    if not body.stream:
        return await container.answers.ask(question)

    async def events() -> AsyncIterator[str]:
        async for event in container.answers.stream(question):
            yield f"event: {event.name}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
