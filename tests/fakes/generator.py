"""FakeGenerator: scripted replies, streamed in pieces, with failures on demand and every request recorded."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from core.protocols import GeneratorUnavailable
from core.types import ChatMessage, GenerationDelta, GenerationResult, Usage
from tests.fakes._text import words

Reply = str | Callable[[Sequence[ChatMessage]], str]
Failure = Literal["never", "before", "mid_stream"]


@dataclass(frozen=True)
class GeneratorCall:
    messages: list[ChatMessage]
    pattern: str | None
    streamed: bool
    max_tokens: int | None = None
    temperature: float | None = None


class FakeGenerator:
    """Answers with `replies` in order (the last one again once they run out); a reply may be a function of
    the messages, e.g. one that reads the numbered sources in the prompt and cites one of them.

    `fail`: "before" raises GeneratorUnavailable before any text (a server that is down), "mid_stream"
    after `fail_after` pieces of a stream (a server that dies mid-answer; `generate` raises too).
    With a `pattern` the reply must match it in full, as constrained decoding would guarantee: a test that
    scripts a reply the pattern forbids fails instead of testing something vLLM would never send."""

    def __init__(self, *replies: Reply, piece_chars: int = 5, fail: Failure = "never", fail_after: int = 1) -> None:
        self._replies = list(replies)
        self.piece_chars = piece_chars
        self.fail: Failure = fail
        self.fail_after = fail_after
        self.calls: list[GeneratorCall] = []

    def _reply(
        self, messages: Sequence[ChatMessage], pattern: str | None, *, streamed: bool,
        max_tokens: int | None = None, temperature: float | None = None,
    ) -> str:  # fmt: skip
        self.calls.append(GeneratorCall(list(messages), pattern, streamed, max_tokens, temperature))
        if not self._replies:
            raise AssertionError("FakeGenerator has no scripted reply")
        reply = self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]
        text = reply(messages) if callable(reply) else reply
        if pattern is not None and re.fullmatch(pattern, text) is None:
            raise AssertionError(f"scripted reply {text!r} does not match the decoding pattern {pattern!r}")
        return text

    def pieces(self, text: str) -> list[str]:
        return [text[i : i + self.piece_chars] for i in range(0, len(text), self.piece_chars)]

    @staticmethod
    def usage(messages: Sequence[ChatMessage], pieces: Sequence[str]) -> Usage:
        return Usage(prompt_tokens=sum(len(words(m.content)) for m in messages), completion_tokens=len(pieces))

    async def generate(
        self, messages: Sequence[ChatMessage], *, pattern: str | None = None, max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> GenerationResult:  # fmt: skip
        text = self._reply(messages, pattern, streamed=False, max_tokens=max_tokens, temperature=temperature)
        if self.fail != "never":
            raise GeneratorUnavailable(f"fake model server unavailable ({self.fail})")
        return GenerationResult(text=text, usage=self.usage(messages, self.pieces(text)))

    async def stream(
        self, messages: Sequence[ChatMessage], *, pattern: str | None = None, max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[GenerationDelta]:  # fmt: skip
        text = self._reply(messages, pattern, streamed=True, max_tokens=max_tokens, temperature=temperature)
        if self.fail == "before":
            raise GeneratorUnavailable("fake model server unavailable (before the first token)")
        pieces = self.pieces(text)
        for n, piece in enumerate(pieces):
            if self.fail == "mid_stream" and n == self.fail_after:
                raise GeneratorUnavailable("fake model server died mid-answer")
            yield GenerationDelta(text=piece)
        if self.fail == "mid_stream":
            raise GeneratorUnavailable("fake model server died before the usage")
        yield GenerationDelta(usage=self.usage(messages, pieces))
