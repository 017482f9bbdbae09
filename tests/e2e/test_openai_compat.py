"""OpenAI's own Python client and LangChain's ChatOpenAI, unchanged, against a real kb API process with
vLLM (SmolLM2 on the CPU): a knowledge base is a model, answers carry kb's citations, keys and grants
apply, and errors arrive as the exceptions those clients raise.

SmolLM2-135M's wording is not asserted; retrieval (which document the citations name) and the protocol are.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from app.access.bootstrap import ensure_default_kb
from app.access.principal import ALL_KBS
from app.access.roles import Role
from app.container import Container
from serving.launcher import LLMServer
from tests.api_process import ApiProcess, api_process, shared_home
from tests.conftest import DATA
from tests.e2e.conftest import MODELS_DIR, SERVED_NAME

pytestmark = pytest.mark.e2e

LEAVE_QUESTION = "How many days of annual leave do new employees get?"
MAX_TOKENS = 64


@dataclass(frozen=True)
class Stack:
    api: ApiProcess
    employee: str  # kb "default" only
    admin: str
    limited: str  # a service key, whose role the API process limits to 3 requests a minute

    def client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.api.url}/v1", api_key=key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def stack(llm_server: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("openai")
    env = {
        "KB_LLM__BASE_URL": llm_server.base_url, "KB_LLM__SERVED_MODEL_NAME": SERVED_NAME,
        "KB_LLM__MAX_TOKENS": str(MAX_TOKENS),
        # The model's own answers (usage, streamed chunks), not the extractive default.
        "KB_LLM__ANSWER_MODE": "generative",
        # For the rate-limit test: service keys get 3 requests a minute (no other test uses one).
        "KB_RATE_LIMITS__SERVICE__REQUESTS_PER_MINUTE": "3",
    }  # fmt: skip
    with shared_home(root / "var", MODELS_DIR, **env) as kb_home:
        c = Container(kb_home.settings)
        ensure_default_kb(c.registry, kb_home.settings)
        c.registry.create_knowledge_base("legal", description="Contracts (legal team only)")
        results = c.ingest.ingest_paths([DATA], kb="default", acl_groups=["public"])
        assert all(r.status == "indexed" for r in results), results
        employee = c.keys.create(name="emp", role=Role.employee, kbs=["default"]).secret
        admin = c.keys.create(name="root", role=Role.admin, kbs=[ALL_KBS]).secret
        limited = c.keys.create(name="slow", role=Role.service, kbs=["default"]).secret
        c.store.close()
        with api_process(kb_home) as api:
            yield Stack(api=api, employee=employee, admin=admin, limited=limited)


def test_a_completion_answers_with_citations_from_the_right_document(stack: Stack) -> None:
    response = stack.client(stack.employee).chat.completions.create(
        model="default",
        messages=[
            {"role": "system", "content": "Ignored: kb answers with its own instructions."},
            {"role": "user", "content": LEAVE_QUESTION},
        ],
    )
    assert response.object == "chat.completion" and response.model == "default"
    assert response.id.startswith("chatcmpl-")
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content and choice.finish_reason == "stop"
    assert response.usage is not None and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    extra: dict[str, Any] = response.model_extra or {}
    assert extra["kb"]["degraded"] is False and extra["kb"]["refused"] is False
    assert response.id == f"chatcmpl-{extra['kb']['answer_id']}"
    assert extra["sources"][0]["doc_id"] == "leave-policy.md"
    assert extra["citations"] and {c["doc_id"] for c in extra["citations"]} <= {s["doc_id"] for s in extra["sources"]}
    assert "leave-policy.md" in {c["doc_id"] for c in extra["citations"]}
    assert all(f"[{c['index']}]" in choice.message.content for c in extra["citations"])


def test_a_streamed_completion_arrives_in_chunks_and_ends_with_the_citations(stack: Stack) -> None:
    stream = stack.client(stack.employee).chat.completions.create(
        model="default", messages=[{"role": "user", "content": LEAVE_QUESTION}], stream=True, max_tokens=48
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.strip() and len(chunks) > 3
    final = chunks[-1]
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and 0 < final.usage.completion_tokens <= 48
    extra: dict[str, Any] = final.model_extra or {}
    assert "leave-policy.md" in {c["doc_id"] for c in extra["citations"]}
    assert extra["kb"]["degraded"] is False
    assert len({c.id for c in chunks}) == 1


def test_models_lists_only_the_granted_knowledge_bases(stack: Stack) -> None:
    employee = stack.client(stack.employee).models.list()
    assert [(m.id, m.owned_by) for m in employee.data] == [("default", "kb")]
    assert (employee.data[0].model_extra or {})["description"] == "Company documents"
    assert [m.id for m in stack.client(stack.admin).models.list().data] == ["default", "legal"]


def test_a_wrong_key_raises_authentication_error(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        stack.client("kb_000000000000_not-a-key").chat.completions.create(
            model="default", messages=[{"role": "user", "content": LEAVE_QUESTION}]
        )


def test_a_knowledge_base_not_granted_raises_permission_denied(stack: Stack) -> None:
    with pytest.raises(openai.PermissionDeniedError) as denied:
        stack.client(stack.employee).chat.completions.create(
            model="legal", messages=[{"role": "user", "content": LEAVE_QUESTION}]
        )
    assert "legal" in denied.value.message
    with pytest.raises(openai.NotFoundError):
        stack.client(stack.admin).chat.completions.create(
            model="no_such_kb", messages=[{"role": "user", "content": LEAVE_QUESTION}]
        )


def test_out_of_bounds_parameters_raise_bad_request(stack: Stack) -> None:
    client = stack.client(stack.employee)
    messages: Any = [{"role": "user", "content": LEAVE_QUESTION}]
    for kwargs in ({"max_tokens": MAX_TOKENS + 1}, {"temperature": 2.5}, {"n": 2}):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="default", messages=messages, **kwargs)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="default", messages=[{"role": "system", "content": "no question"}])


def test_langchain_chat_openai_works_unchanged(stack: Stack) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{stack.api.url}/v1", api_key=stack.employee, model="default", max_retries=0)  # type: ignore[arg-type]
    message = llm.invoke(LEAVE_QUESTION)
    assert isinstance(message.content, str) and message.content.strip()
    streamed = "".join(str(chunk.content) for chunk in llm.stream(LEAVE_QUESTION))
    assert streamed.strip()


def test_a_rate_limited_key_raises_rate_limit_error(stack: Stack) -> None:
    client = stack.client(stack.limited)
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(10):
            client.models.list()
    assert int(limited.value.response.headers["retry-after"]) >= 1
