"""OpenAIGenerator against a real vLLM (SmolLM2-135M on the CPU): the Generator contract suite that
tests/contracts runs against FakeGenerator, and follow-up condensing with the real model."""

from __future__ import annotations

import asyncio

import pytest

from core.types import ChatMessage
from retrieval.condense import Condenser
from serving.generator import OpenAIGenerator
from serving.launcher import LLMServer
from serving.prompts import PromptBook
from tests.contracts.test_generator_contract import ServingGeneratorContract
from tests.e2e.conftest import SERVED_NAME

pytestmark = pytest.mark.e2e


def generator_for(base_url: str, *, max_tokens: int = 24) -> OpenAIGenerator:
    return OpenAIGenerator(
        base_url=base_url, api_key="EMPTY", model=SERVED_NAME, max_tokens=max_tokens, temperature=0.0,
        timeout_s=60, retries=1,
    )  # fmt: skip


class TestOpenAIGeneratorOnVLLM(ServingGeneratorContract):
    @pytest.fixture
    def generator(self, llm_server: LLMServer) -> OpenAIGenerator:
        # One per test, used inside that test's event loop only (its connections belong to that loop).
        return generator_for(llm_server.base_url)


def test_a_follow_up_becomes_a_standalone_query(llm_server: LLMServer) -> None:
    history = [
        ChatMessage(role="user", content="How many days of annual leave do new employees get?"),
        ChatMessage(role="assistant", content="New employees get 20 days of annual leave [1]."),
    ]

    async def run() -> tuple[str, str]:
        generator = generator_for(llm_server.base_url, max_tokens=48)
        condenser = Condenser(generator, PromptBook().template("condense.j2"), timeout_s=60)
        result = await condenser.condense("And contractors?", history)
        await generator.close()
        return result.query, result.method

    query, method = asyncio.run(run())
    assert method == "llm"
    # The rewrite carries the topic from the history and the new subject from the question.
    assert "contractor" in query.lower() and "leave" in query.lower(), query
