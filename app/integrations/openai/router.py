"""POST /v1/chat/completions, GET /v1/models: kb for clients that speak OpenAI (see service.py beside it)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from app.access.deps import Asker
from app.answers.gate import Asking
from app.deps import ContainerDep
from app.errors import OPENAI_ERROR_RESPONSES
from app.integrations.openai import service as openai_compat
from app.integrations.openai.service import ChatCompletion, ChatCompletionRequest, Model, ModelList

router = APIRouter(prefix="/v1", tags=["openai"], responses=OPENAI_ERROR_RESPONSES)

_SSE_DOC = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": 'With "stream": true: `chat.completion.chunk` events, the last with kb\'s citations, '
        "then `[DONE]`.",
    }
}


@router.post("/chat/completions", response_model=ChatCompletion, responses=_SSE_DOC)  # type: ignore[arg-type]
async def chat_completions(
    request: Request, body: ChatCompletionRequest, container: ContainerDep, caller: Asker
) -> ChatCompletion | Response:
    completion = openai_compat.check_request(body, caller, container.registry, container.settings.llm.max_tokens)
    # The same gate and bookkeeping as /ask: grants, sizes, sensitive terms, token budget, in-flight cap, audit.
    asking = Asking.of_request(request, caller)
    question = completion.question
    await asking.admit(kb=completion.kb, question=question.text, history=question.history)
    if not completion.stream:
        return openai_compat.chat_completion(completion.kb, await asking.answer(question))
    stream = asking.stream(question)
    return StreamingResponse(
        openai_compat.stream_chunks(stream.events, completion),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
        background=BackgroundTask(stream.release.release),
    )


@router.get("/models", response_model=ModelList)
async def list_models(container: ContainerDep, caller: Asker) -> ModelList:
    return openai_compat.models(caller, container.registry)


@router.get("/models/{name}", response_model=Model)
async def get_model(name: str, container: ContainerDep, caller: Asker) -> Model:
    return openai_compat.model(caller, container.registry, name)
