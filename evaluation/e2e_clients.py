"""The sides `kb bench e2e` drives with the same prompts: kb's API (`POST /ask`, server-sent events), kb's
OpenAI-compatible endpoint (`POST /v1/chat/completions`, streamed) and the model server alone (OpenAI chat
completions, streamed), and the concurrent askers around them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
from httpx_sse import SSEError, aconnect_sse
from pydantic import BaseModel, ValidationError

from core.types import ChatMessage

# -- the parts of the servers' JSON read here ---------------------------------------------


class _Usage(BaseModel):
    completion_tokens: int = 0


class _KbDone(BaseModel):
    usage: _Usage | None = None
    degraded: bool = False
    refused: bool = False


class _Delta(BaseModel):
    content: str | None = None


class _Choice(BaseModel):
    delta: _Delta = _Delta()


class _ChatChunk(BaseModel):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    # kb's OpenAI-compatible stream adds these to its final chunk.
    kb: _KbDone | None = None


@dataclass(frozen=True)
class Prompt:
    question: str
    messages: list[ChatMessage]
    pattern: str | None


@dataclass
class Sample:
    ok: bool = False
    ttft_ms: float = 0.0
    e2e_ms: float = 0.0
    completion_tokens: int = 0


# -- askers -------------------------------------------------------------------------------------------

Asker = Callable[[httpx.AsyncClient, Prompt], Awaitable[Sample]]


def kb_asker(api_url: str, kb: str, api_key: str) -> Asker:
    headers = {"Authorization": f"Bearer {api_key}"}

    async def ask(client: httpx.AsyncClient, prompt: Prompt) -> Sample:
        started = time.perf_counter()
        sample = Sample()
        payload = {"question": prompt.question, "kb": kb, "stream": True}
        async with aconnect_sse(client, "POST", f"{api_url}/ask", json=payload, headers=headers) as source:
            if source.response.status_code != 200:
                return sample
            async for event in source.aiter_sse():
                if event.event == "token" and not sample.ttft_ms:
                    sample.ttft_ms = (time.perf_counter() - started) * 1000
                elif event.event == "done":
                    done = _KbDone.model_validate_json(event.data)
                    sample.completion_tokens = done.usage.completion_tokens if done.usage else 0
                    sample.ok = not done.degraded and not done.refused
                elif event.event == "error":
                    return sample
        sample.e2e_ms = (time.perf_counter() - started) * 1000
        return sample

    return ask


def openai_asker(api_url: str, kb: str, api_key: str) -> Asker:
    """kb through its OpenAI-compatible endpoint, as OpenAI's clients call it: the question as the user
    message, the knowledge base as the model."""
    headers = {"Authorization": f"Bearer {api_key}"}

    async def ask(client: httpx.AsyncClient, prompt: Prompt) -> Sample:
        body = {"model": kb, "messages": [{"role": "user", "content": prompt.question}], "stream": True}
        started = time.perf_counter()
        sample = Sample()
        final: _KbDone | None = None
        url = f"{api_url}/v1/chat/completions"
        async with aconnect_sse(client, "POST", url, json=body, headers=headers) as source:
            if source.response.status_code != 200:
                return sample
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    break
                chunk = _ChatChunk.model_validate_json(event.data)
                if not chunk.choices:  # an error event
                    return sample
                if chunk.choices[0].delta.content and not sample.ttft_ms:
                    sample.ttft_ms = (time.perf_counter() - started) * 1000
                if chunk.usage:
                    sample.completion_tokens = chunk.usage.completion_tokens
                final = chunk.kb or final
        sample.e2e_ms = (time.perf_counter() - started) * 1000
        sample.ok = final is not None and not final.degraded and not final.refused and sample.ttft_ms > 0
        return sample

    return ask


def vllm_asker(llm_url: str, model: str, api_key: str, max_tokens: int, temperature: float) -> Asker:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def ask(client: httpx.AsyncClient, prompt: Prompt) -> Sample:
        body: dict[str, object] = {
            "model": model, "messages": [m.model_dump() for m in prompt.messages], "max_tokens": max_tokens,
            "temperature": temperature, "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        if prompt.pattern:
            body["structured_outputs"] = {"regex": prompt.pattern}
        started = time.perf_counter()
        sample = Sample()
        async with aconnect_sse(client, "POST", f"{llm_url}/chat/completions", json=body, headers=headers) as source:
            if source.response.status_code != 200:
                return sample
            async for event in source.aiter_sse():
                if event.data == "[DONE]":
                    break
                chunk = _ChatChunk.model_validate_json(event.data)
                if chunk.choices and chunk.choices[0].delta.content and not sample.ttft_ms:
                    sample.ttft_ms = (time.perf_counter() - started) * 1000
                if chunk.usage:
                    sample.completion_tokens = chunk.usage.completion_tokens
        sample.e2e_ms = (time.perf_counter() - started) * 1000
        sample.ok = sample.ttft_ms > 0
        return sample

    return ask


async def run_level(
    concurrency: int, prompts: Sequence[Prompt], ask: Asker, timeout_s: float
) -> tuple[list[Sample], float]:
    """Every prompt once, by `concurrency` askers; the samples and the wall time in seconds."""
    queue: asyncio.Queue[Prompt] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                prompt = queue.get_nowait()
                try:
                    samples.append(await ask(client, prompt))
                except (httpx.HTTPError, SSEError, ValidationError):
                    samples.append(Sample())  # counted as an error, as a user would see it

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started
