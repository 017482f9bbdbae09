"""The answer path with the model server down: real retrieval, a generator pointed at a closed port."""

from __future__ import annotations

import asyncio

import pytest

from app.answers.service import AnswerService, Question
from app.container import Container
from core.procs import free_port
from serving.generator import OpenAIGenerator
from serving.prompts import PromptBook
from tests.conftest import ALL

pytestmark = pytest.mark.integration


def service(container: Container) -> AnswerService:
    generator = OpenAIGenerator(
        base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="EMPTY", model="kb-llm",
        max_tokens=64, temperature=0.0, timeout_s=5.0, retries=1,
    )  # fmt: skip
    return AnswerService(
        query=container.query, generator=generator, prompts=PromptBook(), top_k=3, citation_guard=True,
        support=container.support,
    )  # fmt: skip


def test_answer_is_degraded_to_quotes_from_the_sources_when_the_model_is_down(demo_home: Container) -> None:
    answer = asyncio.run(service(demo_home).ask(Question(access=ALL, text="How long must passwords be?")))
    assert answer.degraded and answer.extractive and not answer.refused
    assert answer.sources[0].doc_id == "it-security-policy.docx"
    assert answer.answer.startswith(
        "Passwords must be at least 14 characters long and must not be reused across services [1]."
    )
    assert answer.citations[0] == answer.sources[0] and all(c in answer.sources for c in answer.citations)
    assert "unavailable" in answer.message


def test_stream_falls_back_to_the_same_degraded_events(demo_home: Container) -> None:
    async def collect() -> list[tuple[str, dict[str, object]]]:
        return [
            (e.name, e.data)
            async for e in service(demo_home).stream(Question(access=ALL, text="报销需要在多少天内提交？"))
        ]

    events = asyncio.run(collect())
    assert [n for n, _ in events] == ["token", "citations", "done"]
    assert events[2][1]["degraded"] is True and events[2][1]["extractive"] is True
    sources = events[1][1]["sources"]
    assert isinstance(sources, list) and sources[0]["doc_id"] == "expense-policy-zh.md"
    assert str(events[0][1]["text"]).startswith("员工应在费用发生后30天内通过财务系统提交报销申请[1]。")


def test_empty_knowledge_base_refuses_without_calling_the_model(demo_home: Container) -> None:
    answer = asyncio.run(
        service(demo_home).ask(Question(access=ALL, text="What is our parking policy?", kb="empty_kb"))
    )
    assert answer.refused and not answer.degraded
    assert answer.answer == "Not found in the knowledge base."
    zh = asyncio.run(service(demo_home).ask(Question(access=ALL, text="停车政策是什么？", kb="empty_kb")))
    assert zh.refused and zh.answer == "知识库中没有找到相关内容。"
