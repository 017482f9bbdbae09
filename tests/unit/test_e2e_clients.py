"""`kb bench e2e`'s two askers read real server-sent event streams (httpx-sse), served here through
httpx's MockTransport in the shapes kb's API and vLLM send."""

from __future__ import annotations

import asyncio
import json

import httpx

from core.types import ChatMessage
from evaluation.e2e_clients import Prompt, Sample, kb_asker, openai_asker, run_level, vllm_asker

PROMPT = Prompt(question="How long is annual leave?", messages=[ChatMessage(role="user", content="q")], pattern="x+")


def sse(*events: tuple[str | None, str]) -> bytes:
    return "".join((f"event: {name}\n" if name else "") + f"data: {data}\n\n" for name, data in events).encode()


def kb_stream(done: dict[str, object]) -> bytes:
    return sse(
        ("token", json.dumps({"text": "Twenty days"})),
        ("token", json.dumps({"text": " [1]."})),
        ("citations", json.dumps({"answer": "Twenty days [1].", "citations": []})),
        ("done", json.dumps({"usage": {"prompt_tokens": 90, "completion_tokens": 7}, "timings": {}, **done})),
    )


def ask(asker_bytes: bytes, asker: str, status: int = 200) -> tuple[Sample, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, headers={"content-type": "text/event-stream"}, content=asker_bytes)

    async def go() -> Sample:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            if asker == "kb":
                return await kb_asker("http://kb", "hr", "kb_key_secret")(client, PROMPT)
            if asker == "openai":
                return await openai_asker("http://kb", "hr", "kb_key_secret")(client, PROMPT)
            return await vllm_asker("http://llm/v1", "m", "secret", 32, 0.0)(client, PROMPT)

    return asyncio.run(go()), seen


def test_kb_asker_times_the_first_token_and_reads_usage_from_done() -> None:
    sample, (request,) = ask(kb_stream({"refused": False, "degraded": False}), "kb")
    assert sample.ok and sample.completion_tokens == 7
    assert 0 < sample.ttft_ms <= sample.e2e_ms
    assert request.url == "http://kb/ask" and request.headers["accept"] == "text/event-stream"
    assert request.headers["authorization"] == "Bearer kb_key_secret"
    assert json.loads(request.content) == {"question": PROMPT.question, "kb": "hr", "stream": True}


def test_kb_asker_counts_refusals_degraded_answers_and_errors_as_failures() -> None:
    assert not ask(kb_stream({"refused": True}), "kb")[0].ok
    assert not ask(kb_stream({"degraded": True}), "kb")[0].ok
    assert not ask(sse(("error", json.dumps({"error": {"code": "x"}}))), "kb")[0].ok
    assert not ask(b"", "kb", status=503)[0].ok


def test_vllm_asker_sends_kbs_prompt_and_reads_the_usage_chunk() -> None:
    chunks = [
        {"choices": [{"delta": {"role": "assistant"}}]},
        {"choices": [{"delta": {"content": "Twenty"}}]},
        {"choices": [], "usage": {"prompt_tokens": 90, "completion_tokens": 5}},
    ]
    sample, (request,) = ask(sse(*((None, json.dumps(c)) for c in chunks), (None, "[DONE]")), "vllm")
    assert sample.ok and sample.completion_tokens == 5 and 0 < sample.ttft_ms <= sample.e2e_ms
    body = json.loads(request.content)
    assert body["messages"] == [{"role": "user", "content": "q"}] and body["max_tokens"] == 32
    assert body["structured_outputs"] == {"regex": "x+"} and body["stream_options"] == {"include_usage": True}
    assert request.headers["authorization"] == "Bearer secret"


def test_a_level_asks_every_prompt_once_and_records_broken_streams_as_errors() -> None:
    calls: list[str] = []

    async def flaky(client: httpx.AsyncClient, prompt: Prompt) -> Sample:
        calls.append(prompt.question)
        if prompt.question == "bad":
            raise httpx.ReadError("connection reset")
        return Sample(ok=True, ttft_ms=1.0, e2e_ms=2.0)

    prompts = [Prompt(q, [], None) for q in ("a", "bad", "c", "d")]
    samples, wall = asyncio.run(run_level(3, prompts, flaky, timeout_s=5))
    assert sorted(calls) == ["a", "bad", "c", "d"] and wall >= 0
    assert sorted(s.ok for s in samples) == [False, True, True, True]


def openai_stream(final_kb: dict[str, object]) -> bytes:
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
        {"choices": [{"index": 0, "delta": {"content": "Twenty days [1]."}}]},
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 90, "completion_tokens": 6, "total_tokens": 96},
            "citations": [], "sources": [], "kb": {"answer_id": "a", "grounded": True, "message": "", **final_kb},
        },
    ]  # fmt: skip
    return sse(*((None, json.dumps(c)) for c in chunks), (None, "[DONE]"))


def test_openai_asker_asks_kbs_v1_endpoint_and_reads_the_final_chunk() -> None:
    sample, (request,) = ask(openai_stream({"refused": False, "degraded": False}), "openai")
    assert sample.ok and sample.completion_tokens == 6 and 0 < sample.ttft_ms <= sample.e2e_ms
    assert request.url == "http://kb/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer kb_key_secret"
    body = json.loads(request.content)
    assert body == {"model": "hr", "messages": [{"role": "user", "content": PROMPT.question}], "stream": True}
    assert not ask(openai_stream({"refused": True, "degraded": False}), "openai")[0].ok
    assert not ask(openai_stream({"refused": False, "degraded": True}), "openai")[0].ok
    error = {"error": {"message": "model died", "type": "server_error", "code": "llm_unavailable"}}
    assert not ask(sse((None, json.dumps(error))), "openai")[0].ok
