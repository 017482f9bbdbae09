"""The Generator contract. Two mixins, so that each implementation runs what its setting allows:

- `ServingGeneratorContract` needs a working model server: FakeGenerator here, OpenAIGenerator against a real
  vLLM in tests/e2e/test_openai_generator.py (TestOpenAIGeneratorOnVLLM).
- `UnreachableGeneratorContract` needs none: FakeGenerator told to fail, and OpenAIGenerator pointed at a
  free port where nothing listens, both here.

Subclasses provide the `generator` / `unreachable` fixtures.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence

import pytest

from core.procs import free_port
from core.protocols import Generator, GeneratorUnavailable
from core.types import ChatMessage, GenerationDelta, GenerationResult
from tests.fakes import FakeGenerator

HELLO = [
    ChatMessage(role="system", content="You are a helpful assistant. Answer in one short sentence."),
    ChatMessage(role="user", content="Say hello to the new employees."),
]
YES_NO = [ChatMessage(role="user", content="Is Paris the capital of France? Answer Yes or No.")]
YES_NO_PATTERN = r"(Yes|No)\."


async def collect(stream: AsyncIterator[GenerationDelta]) -> list[GenerationDelta]:
    return [delta async for delta in stream]


# Each test makes all its calls inside one asyncio.run: a client's connections belong to the event loop that
# opened them (kb's server runs one loop), so a generator is not carried from one loop to the next.


class ServingGeneratorContract:
    def test_it_is_a_generator(self, generator: Generator) -> None:
        assert isinstance(generator, Generator)

    def test_generate_returns_text_and_usage(self, generator: Generator) -> None:
        result = asyncio.run(generator.generate(HELLO))
        assert result.text.strip()
        assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens > 0

    def test_stream_yields_text_deltas_then_one_usage(self, generator: Generator) -> None:
        deltas = asyncio.run(collect(generator.stream(HELLO)))
        *texts, last = deltas
        assert texts, "no text before the usage"
        assert all(d.text and d.usage is None for d in texts)
        assert last.text == "" and last.usage is not None
        assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
        assert "".join(d.text for d in texts).strip()

    def test_stream_and_generate_give_the_same_answer(self, generator: Generator) -> None:
        # Temperature 0 (kb's default): the same messages give the same text, streamed or not.
        async def both() -> tuple[GenerationResult, list[GenerationDelta]]:
            return await generator.generate(HELLO), await collect(generator.stream(HELLO))

        whole, deltas = asyncio.run(both())
        assert "".join(d.text for d in deltas) == whole.text
        assert deltas[-1].usage == whole.usage

    def test_a_pattern_constrains_the_output(self, generator: Generator) -> None:
        async def both() -> tuple[GenerationResult, list[GenerationDelta]]:
            return (
                await generator.generate(YES_NO, pattern=YES_NO_PATTERN),
                await collect(generator.stream(YES_NO, pattern=YES_NO_PATTERN)),
            )

        result, deltas = asyncio.run(both())
        assert re.fullmatch(YES_NO_PATTERN, result.text), result.text
        streamed = "".join(d.text for d in deltas)
        assert re.fullmatch(YES_NO_PATTERN, streamed), streamed


class UnreachableGeneratorContract:
    def test_generate_raises_generator_unavailable(self, unreachable: Generator) -> None:
        with pytest.raises(GeneratorUnavailable):
            asyncio.run(unreachable.generate(HELLO))

    def test_stream_raises_generator_unavailable_before_any_text(self, unreachable: Generator) -> None:
        received: list[GenerationDelta] = []

        async def run() -> None:
            async for delta in unreachable.stream(HELLO):
                received.append(delta)

        with pytest.raises(GeneratorUnavailable):
            asyncio.run(run())
        assert received == []


def scripted(messages: Sequence[ChatMessage]) -> str:
    return "Yes." if "Yes or No" in messages[-1].content else "Hello and welcome to the company!"


class TestFakeGenerator(ServingGeneratorContract, UnreachableGeneratorContract):
    @pytest.fixture
    def generator(self) -> FakeGenerator:
        return FakeGenerator(scripted)

    @pytest.fixture
    def unreachable(self) -> FakeGenerator:
        return FakeGenerator(scripted, fail="before")

    # What the fake adds for unit tests: failures mid-stream, a record of requests, honest patterns.
    def test_mid_stream_failure_comes_after_some_text(self) -> None:
        fake = FakeGenerator("Employees get twenty days.", fail="mid_stream", fail_after=2)
        received: list[GenerationDelta] = []

        async def run() -> None:
            async for delta in fake.stream(HELLO):
                received.append(delta)

        with pytest.raises(GeneratorUnavailable):
            asyncio.run(run())
        assert [d.text for d in received] == ["Emplo", "yees "]
        with pytest.raises(GeneratorUnavailable):
            asyncio.run(fake.generate(HELLO))

    def test_requests_are_recorded_and_replies_come_in_order(self) -> None:
        fake = FakeGenerator("first", "second")
        assert asyncio.run(fake.generate(HELLO)).text == "first"
        assert "".join(d.text for d in asyncio.run(collect(fake.stream(YES_NO, pattern="s.*")))) == "second"
        assert asyncio.run(fake.generate(HELLO)).text == "second"  # the last reply repeats
        assert [(c.messages, c.pattern, c.streamed) for c in fake.calls] == [
            (HELLO, None, False), (YES_NO, "s.*", True), (HELLO, None, False),
        ]  # fmt: skip

    def test_a_reply_the_pattern_forbids_is_a_test_error(self) -> None:
        with pytest.raises(AssertionError, match="decoding pattern"):
            asyncio.run(FakeGenerator("Maybe.").generate(YES_NO, pattern=YES_NO_PATTERN))


class TestOpenAIGeneratorWithoutServer(UnreachableGeneratorContract):
    @pytest.fixture
    def unreachable(self) -> Generator:
        from serving.generator import OpenAIGenerator

        return OpenAIGenerator(
            base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="EMPTY", model="kb-llm", max_tokens=8,
            temperature=0.0, timeout_s=5.0, retries=1, backoff_s=0.01,
        )  # fmt: skip
