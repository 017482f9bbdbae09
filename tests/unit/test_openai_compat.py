"""The OpenAI-compatible endpoint's own logic on fakes: messages → question and history, the request
checks, the per-request decoding limits reaching the model, the streamed chunks, and the error shape
chosen by path."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from app.access.principal import ALL_KBS, Principal
from app.access.roles import Role
from app.answers.service import Question
from app.errors import Forbidden, InvalidRequest, KBError, NotFound, RateLimited, install_error_handlers
from app.integrations.openai.service import (
    ChatCompletionRequest,
    Completion,
    check_request,
    conversation,
    models,
    stream_chunks,
)
from core.types import ChatMessage
from ingest.registry import Registry
from tests.unit.test_answer_service import LEAVE, cite, make_kb

EMPLOYEE = Principal(key_id="k1", name="ana", role=Role.employee, groups=("hr",), kbs=("default",))
ADMIN = Principal(key_id="k2", name="root", role=Role.admin, kbs=(ALL_KBS,))


def request(**fields: Any) -> ChatCompletionRequest:
    body: dict[str, Any] = {"model": "default", "messages": [{"role": "user", "content": "How much leave?"}]}
    return ChatCompletionRequest.model_validate({**body, **fields})


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    r = Registry(f"sqlite:///{tmp_path / 'kb.db'}")
    r.create_knowledge_base("default", description="Company documents")
    r.create_knowledge_base("hr", description="HR only")
    return r


# -- messages → question and history ------------------------------------------------------------------


def test_the_last_user_message_is_the_question_and_earlier_turns_the_history() -> None:
    turns = conversation(
        request(
            messages=[
                {"role": "system", "content": "Answer like a pirate and never cite anything."},
                {"role": "user", "content": "How many days of leave do I get?"},
                {"role": "assistant", "content": "20 days [1]."},
                {"role": "developer", "content": "ignored too"},
                {"role": "user", "content": [{"type": "text", "text": "And can I"}, {"type": "text", "text": "carry"}]},
                {"role": "assistant", "content": "Sure,"},  # a prefill after the question: not continued
            ]
        ).messages
    )
    assert turns.question == "And can I\ncarry"
    # The client's system prompt is not kb's: it never reaches the model.
    assert turns.history == [
        ChatMessage(role="user", content="How many days of leave do I get?"),
        ChatMessage(role="assistant", content="20 days [1]."),
    ]


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "system", "content": "You are helpful."}],
        [{"role": "assistant", "content": "Hello"}],
        [{"role": "user", "content": "   "}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
    ],
)
def test_requests_without_a_usable_question_are_invalid(messages: list[dict[str, Any]]) -> None:
    with pytest.raises(InvalidRequest):
        conversation(request(messages=messages).messages)


# -- the request checks -------------------------------------------------------------------------------


def test_check_request_threads_the_decoding_limits_and_the_callers_access(registry: Registry) -> None:
    completion = check_request(
        request(max_tokens=50, temperature=0.7, stream=True, top_p=0.3, user="x"), EMPLOYEE, registry, max_tokens=384
    )
    q = completion.question
    assert (completion.kb, completion.stream) == ("default", True)
    assert (q.max_tokens, q.temperature, q.access, q.kb) == (50, 0.7, EMPLOYEE.access, "default")
    assert q.answer_id
    # max_completion_tokens is the newer name and wins; nothing given leaves the configured values.
    newer = check_request(request(max_tokens=10, max_completion_tokens=20), EMPLOYEE, registry, 384)
    assert newer.question.max_tokens == 20
    plain = check_request(request(), EMPLOYEE, registry, 384).question
    assert (plain.max_tokens, plain.temperature) == (None, None)


@pytest.mark.parametrize(
    ("caller", "fields", "error"),
    [
        (EMPLOYEE, {"model": "hr"}, Forbidden),  # exists, not granted
        (EMPLOYEE, {"model": "nope"}, Forbidden),  # the same answer when it does not exist
        (ADMIN, {"model": "nope"}, NotFound),
        (EMPLOYEE, {"max_tokens": 385}, InvalidRequest),
        (EMPLOYEE, {"max_completion_tokens": 1000}, InvalidRequest),
        (EMPLOYEE, {"n": 2}, InvalidRequest),
    ],
)
def test_check_request_refuses(
    registry: Registry, caller: Principal, fields: dict[str, Any], error: type[KBError]
) -> None:
    with pytest.raises(error):
        check_request(request(**fields), caller, registry, max_tokens=384)


@pytest.mark.parametrize("fields", [{"temperature": 2.5}, {"temperature": -0.1}, {"max_tokens": 0}, {"messages": []}])
def test_out_of_range_fields_fail_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request(**fields)


def test_models_lists_the_granted_knowledge_bases_that_exist(registry: Registry) -> None:
    granted = Principal(key_id="k", name="n", role=Role.employee, kbs=("default", "ghost"))
    assert [(m.id, m.description, m.owned_by) for m in models(granted, registry).data] == [
        ("default", "Company documents", "kb")
    ]
    assert [m.id for m in models(ADMIN, registry).data] == ["default", "hr"]


# -- the answer service gets the limits; the stream in OpenAI's chunks --------------------------------


def test_per_request_max_tokens_and_temperature_reach_the_model() -> None:
    kb = make_kb(cite(("New employees get 20 days", LEAVE)))
    asyncio.run(kb.service.ask(Question(text="annual leave days", access=EMPLOYEE.access)))
    asyncio.run(kb.service.ask(Question(text="annual leave days", access=EMPLOYEE.access, max_tokens=7, temperature=1)))
    assert [(c.max_tokens, c.temperature) for c in kb.generator.calls] == [(None, None), (7, 1)]


def stream(kb_service: Any, question: Question) -> list[str]:
    async def run() -> list[str]:
        completion = Completion(kb="default", question=question, stream=True)
        return [c async for c in stream_chunks(kb_service.stream(question), completion)]

    return asyncio.run(run())


def events(raw: list[str]) -> list[Any]:
    assert all(r.startswith("data: ") and r.endswith("\n\n") for r in raw)
    return [r.removeprefix("data: ").strip() for r in raw]


def test_stream_sends_role_content_a_final_chunk_with_citations_then_done() -> None:
    kb = make_kb(cite(("New employees get 20 days", LEAVE)))
    question = Question(text="annual leave days", access=EMPLOYEE.access, answer_id="abc123")
    out = events(stream(kb.service, question))
    assert out[-1] == "[DONE]"
    chunks = [json.loads(e) for e in out[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-abc123"}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and {c["model"] for c in chunks} == {"default"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1])
    assert content == "New employees get 20 days [1]."
    final = chunks[-1]
    assert final["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert [c["doc_id"] for c in final["citations"]] == ["leave-policy.md"]
    assert final["sources"] and final["kb"]["answer_id"] == "abc123"
    assert final["kb"]["grounded"] is True and final["kb"]["refused"] is False
    usage = final["usage"]
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_a_model_failing_mid_stream_ends_with_an_openai_error_event() -> None:
    kb = make_kb("New employees get 20 days [1].", fail="mid_stream", fail_after=2, citation_guard=False)
    out = events(stream(kb.service, Question(text="annual leave days", access=EMPLOYEE.access)))
    assert out[-1] != "[DONE]"
    error = json.loads(out[-1])["error"]
    assert error["type"] == "server_error" and error["code"] == "llm_unavailable" and error["message"]


def test_a_degraded_answer_streams_as_content_then_the_final_chunk() -> None:
    kb = make_kb("Unused [1].", fail="before")
    out = events(stream(kb.service, Question(text="annual leave days", access=EMPLOYEE.access)))
    chunks = [json.loads(e) for e in out[:-1]]
    # The sentence of the sources that answers, quoted with its citation (the model is down).
    assert "20 days of paid annual leave per year [1]." in chunks[1]["choices"][0]["delta"]["content"]
    assert chunks[-1]["kb"]["degraded"] is True and chunks[-1]["citations"]
    assert out[-1] == "[DONE]"


# -- the error shape follows the path -----------------------------------------------------------------


class Body(BaseModel):
    value: int


def error_app() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    for prefix in ("", "/v1"):

        @app.post(f"{prefix}/thing")
        def thing(body: Body) -> dict[str, int]:
            if body.value == 403:
                raise Forbidden("not yours")
            if body.value == 429:
                raise RateLimited("slow down", retry_after_s=7)
            if body.value == 500:
                raise RuntimeError("boom")
            return {"value": body.value}

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("payload", "status", "openai_status", "kind", "code"),
    [
        ({"value": 403}, 403, 403, "permission_error", "forbidden"),
        ({"value": 429}, 429, 429, "rate_limit_error", "rate_limited"),
        ({"value": 500}, 500, 500, "server_error", "internal_error"),
        # OpenAI answers an unacceptable request with 400, kb with 422.
        ({"value": "x"}, 422, 400, "invalid_request_error", "invalid_request"),
    ],
)
def test_errors_on_v1_take_openais_shape_and_elsewhere_kbs(
    payload: dict[str, Any], status: int, openai_status: int, kind: str, code: str
) -> None:
    client = error_app()
    kb = client.post("/thing", json=payload)
    assert kb.status_code == status
    assert set(kb.json()["error"]) == {"code", "message", "request_id"} and kb.json()["error"]["code"] == code
    openai = client.post("/v1/thing", json=payload)
    assert openai.status_code == openai_status
    error = openai.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (kind, code) and error["message"]
    if status == 429:
        assert kb.headers["retry-after"] == openai.headers["retry-after"] == "7"
    # An unknown path under /v1 is a 404 in OpenAI's shape too.
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_the_auth_middlewares_401_speaks_the_paths_shape(tmp_path: Path) -> None:
    from app.container import Container
    from app.main import create_app
    from app.settings import Settings

    settings = Settings(home=tmp_path, models_dir=tmp_path / "models", api={"ui_enabled": False})  # type: ignore[arg-type]
    client = TestClient(create_app(settings, Container(settings)))
    openai = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert openai.status_code == 401 and openai.headers["www-authenticate"] == "Bearer"
    assert openai.json()["error"]["type"] == "authentication_error"
    kb = client.post("/ask", content=b"{not json", headers={"content-type": "application/json"})
    assert kb.status_code == 401 and kb.json()["error"]["code"] == "unauthorized"
    assert client.get("/v1/models").json()["error"]["type"] == "authentication_error"
