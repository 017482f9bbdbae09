"""Chat completions from any OpenAI-compatible server (vLLM locally or in a cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from openai import APIConnectionError, APIStatusError, APITimeoutError, AsyncOpenAI, AsyncStream, Timeout
from openai.types.chat import ChatCompletionChunk

from retrieval.types import ChatMessage, GenerationDelta, GenerationResult, Usage


class GeneratorUnavailable(RuntimeError):
    """The model server could not be reached or did not answer in time."""


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
    ) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        # The SDK retries connection errors and 5xx with exponential backoff; we only bound it.
        self._client = AsyncOpenAI(
            base_url=base_url,
            api_key=api_key,
            timeout=Timeout(timeout_s, connect=min(5.0, timeout_s)),
            max_retries=retries,
        )

    @staticmethod
    def _extra(pattern: str | None) -> dict[str, object] | None:
        # vLLM's structured outputs; other OpenAI-compatible servers may reject the field, which is why
        # callers pass a pattern only when the setting says the server supports it.
        return {"structured_outputs": {"regex": pattern}} if pattern else None

    async def generate(self, messages: Sequence[ChatMessage], *, pattern: str | None = None) -> GenerationResult:
        try:
            response = await self._client.chat.completions.create(
                model=self.model,
                messages=[m.model_dump() for m in messages],  # type: ignore[misc]
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                extra_body=self._extra(pattern),
            )
        except (APIConnectionError, APITimeoutError) as exc:
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
        self, messages: Sequence[ChatMessage], *, pattern: str | None = None
    ) -> AsyncIterator[GenerationDelta]:
        try:
            stream = await self._client.chat.completions.create(  # type: ignore[call-overload]
                model=self.model,
                messages=[m.model_dump() for m in messages],
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=self._extra(pattern),
            )
            assert isinstance(stream, AsyncStream)
            event: ChatCompletionChunk
            async for event in stream:
                if event.choices and event.choices[0].delta.content:
                    yield GenerationDelta(text=event.choices[0].delta.content)
                if event.usage is not None:
                    yield GenerationDelta(
                        usage=Usage(
                            prompt_tokens=event.usage.prompt_tokens, completion_tokens=event.usage.completion_tokens
                        )
                    )
        except (APIConnectionError, APITimeoutError) as exc:
            raise GeneratorUnavailable(f"model server unavailable: {exc}") from exc
        except APIStatusError as exc:
            raise GeneratorUnavailable(f"model server error {exc.status_code}: {exc.message}") from exc

    async def ready(self) -> bool:
        try:
            await self._client.with_options(max_retries=0, timeout=3.0).models.list()
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False
        return True

    async def close(self) -> None:
        await self._client.close()
