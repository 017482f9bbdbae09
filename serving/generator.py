"""Chat completions from any OpenAI-compatible server (vLLM locally or in a cluster)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import httpx
from openai import APIConnectionError, APIError, APIStatusError, AsyncOpenAI, AsyncStream, Timeout
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from tenacity import (
    AsyncRetrying,
)

from core.openai_retry import retry_policy
from core.protocols import GeneratorUnavailable
from core.types import ChatMessage, GenerationDelta, GenerationResult, Usage

log = logging.getLogger(__name__)


class OpenAIGenerator:
    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        model: str,
        max_tokens: int,
        temperature: float,
        timeout_s: float,
        retries: int,
        backoff_s: float = 0.5,
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.base_url = base_url
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        # Retries are ours (tenacity, connection errors only); the SDK's own would also retry 5xx and
        # timeouts, which would hide a slow server behind several full timeouts.
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            timeout=Timeout(timeout_s, connect=min(5.0, timeout_s)),
            max_retries=0,
        )

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            **retry_policy(retries=self._retries, timeout_s=self._timeout_s, backoff_s=self._backoff_s, log=log)
        )

    @staticmethod
    def _extra(pattern: str | None) -> dict[str, object] | None:
        # vLLM's structured outputs; other OpenAI-compatible servers may reject the field, which is why
        # callers pass a pattern only when the setting says the server supports it.
        return {"structured_outputs": {"regex": pattern}} if pattern else None

    def _decoding(self, max_tokens: int | None, temperature: float | None) -> tuple[int, float]:
        return (
            self.max_tokens if max_tokens is None else max_tokens,
            self.temperature if temperature is None else temperature,
        )

    async def _create(
        self, messages: Sequence[ChatMessage], pattern: str | None, max_tokens: int, temperature: float
    ) -> ChatCompletion:
        async for attempt in self._retrying():
            with attempt:
                return await self._client.chat.completions.create(
                    model=self.model,
                    messages=[m.model_dump() for m in messages],  # type: ignore[misc]
                    max_tokens=max_tokens,
                    temperature=temperature,
                    extra_body=self._extra(pattern),
                )
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _create_stream(
        self, messages: Sequence[ChatMessage], pattern: str | None, max_tokens: int, temperature: float
    ) -> AsyncStream[ChatCompletionChunk]:
        async for attempt in self._retrying():
            with attempt:
                return await self._client.chat.completions.create(  # type: ignore[call-overload,no-any-return]
                    model=self.model,
                    messages=[m.model_dump() for m in messages],
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body=self._extra(pattern),
                )
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        *,
        pattern: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> GenerationResult:
        try:
            response = await self._create(messages, pattern, *self._decoding(max_tokens, temperature))
        except APIConnectionError as exc:  # APITimeoutError included
            raise GeneratorUnavailable(f"model server unavailable: {exc}") from exc
        except APIStatusError as exc:
            raise GeneratorUnavailable(f"model server error {exc.status_code}: {exc.message}") from exc
        text = response.choices[0].message.content or "" if response.choices else ""
        usage = Usage()
        if response.usage is not None:
            usage = Usage(
                prompt_tokens=response.usage.prompt_tokens,
                completion_tokens=response.usage.completion_tokens,
            )
        return GenerationResult(text=text, usage=usage)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        pattern: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[GenerationDelta]:
        try:
            # Only opening the stream is retried: once tokens have gone out, a retry would repeat them.
            stream = await self._create_stream(messages, pattern, *self._decoding(max_tokens, temperature))
            async for event in stream:
                if event.choices and event.choices[0].delta.content:
                    yield GenerationDelta(text=event.choices[0].delta.content)
                if event.usage is not None:
                    yield GenerationDelta(
                        usage=Usage(
                            prompt_tokens=event.usage.prompt_tokens, completion_tokens=event.usage.completion_tokens
                        )
                    )
        except (APIConnectionError, httpx.TransportError) as exc:  # a server that dies mid-answer drops the stream
            raise GeneratorUnavailable(f"model server unavailable: {exc}") from exc
        except APIStatusError as exc:
            raise GeneratorUnavailable(f"model server error {exc.status_code}: {exc.message}") from exc
        except APIError as exc:  # an error event inside the stream (the server failed mid-answer)
            raise GeneratorUnavailable(f"model server error: {exc.message}") from exc

    async def ready(self) -> bool:
        """True when the server answers /models and lists the configured model."""
        try:
            models = await self._client.with_options(timeout=3.0).models.list()
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False
        return any(m.id == self.model for m in models.data)

    async def close(self) -> None:
        await self._client.close()
