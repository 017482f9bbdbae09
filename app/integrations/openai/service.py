"""kb behind OpenAI's chat-completions protocol: a knowledge base is a "model", the conversation's last user
message is the question, and the answer comes back as an assistant message with kb's citations beside it.

Internal tools that already speak OpenAI (its SDKs, LangChain's ChatOpenAI, chat front-ends) use kb
unchanged; they get exactly what `/ask` gives: the caller's access, the same limits, the same citations.
The client's own `system` (and `developer`) messages are ignored: each knowledge base answers with its own
instructions, which ask for citations and refuse without sources; a client prompt could undo both.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.access.principal import Principal
from app.answers.models import AskRequest
from app.answers.service import Question, StreamEvent
from app.errors import InvalidRequest, NotFound
from core.types import Answer, ChatMessage, Citation, Usage
from ingest.registry import KnowledgeBase, Registry

# -- the request --------------------------------------------------------------------------------------


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    text: str | None = None


class InMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Roles kb does not answer from (system, developer, tool, function) are accepted and left out.
    role: str
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's request kb reads; any other field is accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128, description="the knowledge base to answer from")
    messages: list[InMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: int | None = Field(None, ge=1)


@dataclass(frozen=True)
class Conversation:
    question: str
    history: list[ChatMessage]


def text_of(message: InMessage) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for part in message.content:
        if part.type != "text":
            raise InvalidRequest(f"only text content is supported, not {part.type!r} parts")
        parts.append(part.text or "")
    return "\n".join(parts)


def conversation(messages: Sequence[InMessage]) -> Conversation:
    """The last user message is the question; the user and assistant turns before it are the history.

    System and developer messages are dropped (the knowledge base has its own instructions), and so is
    anything after the last user message (an assistant "prefill" kb does not continue)."""
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=None)
    if last is None:
        raise InvalidRequest("messages must contain a user message: its text is the question")
    question = text_of(messages[last])
    if not question.strip():
        raise InvalidRequest("the last user message is empty")
    history = [
        ChatMessage(role="user" if m.role == "user" else "assistant", content=text_of(m))
        for m in messages[:last]
        if m.role in ("user", "assistant")
    ]
    return Conversation(question=question, history=[h for h in history if h.content.strip()])


@dataclass(frozen=True)
class Completion:
    """A checked request: what AnswerService is asked, and what the response repeats."""

    kb: str
    question: Question
    stream: bool


def check_request(body: ChatCompletionRequest, caller: Principal, registry: Registry, max_tokens: int) -> Completion:
    """403 for a knowledge base the key does not name, 404 for one that does not exist, 400 for what kb
    cannot honour; the question goes through /ask's own request model, so that it meets the same limits."""
    caller.require_kb(body.model)
    if registry.knowledge_base(body.model) is None:
        raise NotFound(f"the model (knowledge base) {body.model!r} does not exist")
    if body.n is not None and body.n > 1:
        raise InvalidRequest("n > 1 is not supported: kb gives one answer per question")
    wanted = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if wanted is not None and wanted > max_tokens:
        raise InvalidRequest(f"max_tokens must be at most {max_tokens} on this server, not {wanted}")
    turns = conversation(body.messages)
    try:
        ask = AskRequest(question=turns.question, history=turns.history, kb=body.model, stream=body.stream)
    except ValidationError as exc:
        raise InvalidRequest(_validation_message(exc)) from exc
    question = Question(
        text=ask.question, access=caller.access, kb=ask.kb, history=[m.chat() for m in ask.history], max_tokens=wanted,
        temperature=body.temperature, answer_id=uuid.uuid4().hex,
    )  # fmt: skip
    return Completion(kb=ask.kb, question=question, stream=ask.stream)


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


# -- the response -------------------------------------------------------------------------------------


class KbInfo(BaseModel):
    """What kb adds to OpenAI's response: whether the answer is a refusal, or passages without the model."""

    answer_id: str
    refused: bool
    degraded: bool
    grounded: bool
    # The content quotes the sources (the model's text had no supported claim, or the model was down). In a
    # stream, the streamed content was the model's: `answer` then holds the text that replaces it.
    extractive: bool = False
    answer: str | None = None
    message: str


class OutMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: OutMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: Usage) -> CompletionUsage:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        )


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    citations: list[Citation]
    sources: list[Citation]
    kb: KbInfo


def completion_id(answer_id: str) -> str:
    return f"chatcmpl-{answer_id}"


def chat_completion(kb: str, answer: Answer) -> ChatCompletion:
    return ChatCompletion(
        id=completion_id(answer.answer_id), created=int(time.time()), model=kb,
        choices=[Choice(message=OutMessage(content=answer.answer))], usage=CompletionUsage.of(answer.usage),
        citations=answer.citations, sources=answer.sources,
        kb=KbInfo(
            answer_id=answer.answer_id, refused=answer.refused, degraded=answer.degraded, grounded=answer.grounded,
            extractive=answer.extractive, message=answer.message,
        ),
    )  # fmt: skip


async def stream_chunks(events: AsyncIterator[StreamEvent], completion: Completion) -> AsyncIterator[str]:
    """Server-sent events as OpenAI streams them: a role chunk, content chunks, a final chunk (empty delta,
    finish_reason "stop", with kb's citations, sources, flags and the usage), then `[DONE]`. A model that
    fails mid-answer ends the stream with an OpenAI error event instead."""
    answer_id = completion.question.answer_id or uuid.uuid4().hex
    head = {
        "id": completion_id(answer_id), "object": "chat.completion.chunk", "created": int(time.time()),
        "model": completion.kb,
    }  # fmt: skip

    def chunk(delta: dict[str, str], finish_reason: str | None = None, **extra: object) -> str:
        body = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant"})
    cited: dict[str, object] = {}
    async for event in events:
        if event.name == "token":
            yield chunk({"content": str(event.data["text"])})
        elif event.name == "citations":
            cited = event.data
        elif event.name == "done":
            yield chunk({}, "stop", **_final(event, cited))
        elif event.name == "error":
            error = {"message": str(event.data["message"]), "type": "server_error", "code": event.data["code"]}
            yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"
            return
    yield "data: [DONE]\n\n"


def _final(done: StreamEvent, cited: dict[str, object]) -> dict[str, object]:
    usage = Usage.model_validate(done.data["usage"])
    info = KbInfo(
        answer_id=str(done.data["answer_id"]), refused=bool(done.data["refused"]),
        degraded=bool(done.data["degraded"]), grounded=bool(cited.get("grounded", False)),
        extractive=bool(cited.get("extractive", False)),
        answer=str(cited.get("answer", "")) if cited.get("extractive") else None, message=str(done.data["message"]),
    )  # fmt: skip
    return {
        "citations": cited.get("citations", []),
        "sources": cited.get("sources", []),
        "kb": info.model_dump(),
        "usage": CompletionUsage.of(usage).model_dump(),
    }


# -- models -------------------------------------------------------------------------------------------


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "kb"
    description: str

    @classmethod
    def of(cls, kb: KnowledgeBase) -> Model:
        return cls(id=kb.name, created=int(kb.created_at.timestamp()), description=kb.description)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


def models(caller: Principal, registry: Registry) -> ModelList:
    """The knowledge bases the key may use and that exist."""
    return ModelList(data=[Model.of(kb) for kb in registry.knowledge_bases() if caller.may_use(kb.name)])


def model(caller: Principal, registry: Registry, name: str) -> Model:
    caller.require_kb(name)
    kb = registry.knowledge_base(name)
    if kb is None:
        raise NotFound(f"the model (knowledge base) {name!r} does not exist")
    return Model.of(kb)
