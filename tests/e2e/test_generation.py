"""Generation against a real vLLM server (SmolLM2-135M on the CPU), started once by serving/launcher.py.

kb reaches vLLM through a recording proxy started by the test, so that the test sees every chat
request kb sends (its prompt, its language, whether one was sent at all) while vLLM's own Prometheus
counters confirm the same from the server's side. The model's wording is not asserted (SmolLM2 is
weak); the wiring is: event order, citations, refusal without a model call, language switch, retries
and degraded mode. The test that stops the server runs last.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.container import Container
from app.main import create_app
from app.settings import Settings
from core.procs import free_port
from core.types import ChatMessage
from serving.generator import OpenAIGenerator
from serving.launcher import LLMServer, LLMServerConfig
from serving.prompts import PromptBook
from tests.conftest import DATA, ROOT

pytestmark = pytest.mark.e2e

LLM_PYTHON = ROOT / ".venv-llm" / "bin" / "python"
MODEL = ROOT / "var" / "models" / "smollm2-135m-instruct"
TIMEOUT_S = 30.0


@dataclass
class RecordingProxy:
    """Forwards everything to vLLM and keeps the JSON body of every chat completion request."""

    upstream: str
    port: int = field(default_factory=free_port)
    chat_requests: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._forward, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _forward(self, request: Request) -> Response:
        body = await request.body()
        if request.url.path.endswith("/chat/completions"):
            self.chat_requests.append(json.loads(body))
        client = httpx.AsyncClient(timeout=None)
        headers = {k: v for k, v in request.headers.items() if k in ("content-type", "authorization")}
        upstream = client.build_request(
            request.method, f"{self.upstream}{request.url.path}", content=body, headers=headers
        )
        try:
            response = await client.send(upstream, stream=True)
        except httpx.TransportError as exc:
            await client.aclose()
            return JSONResponse({"error": {"message": f"upstream down: {exc}"}}, status_code=502)

        async def close() -> None:
            await response.aclose()
            await client.aclose()

        return StreamingResponse(
            response.aiter_raw(), status_code=response.status_code,
            media_type=response.headers.get("content-type"), background=BackgroundTask(close),
        )  # fmt: skip

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert time.monotonic() < deadline, "proxy did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@dataclass
class Generation:
    llm: LLMServer
    proxy: RecordingProxy
    client: TestClient
    settings: Settings

    def vllm_requests(self) -> float:
        """Requests vLLM itself finished, from its Prometheus counters."""
        text = httpx.get(f"http://127.0.0.1:{self.llm.cfg.port}/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total")
        )

    def settled_vllm_requests(self) -> float:
        """The counter once earlier requests have all been counted (it lags their last token a little)."""
        previous, current = -1.0, self.vllm_requests()
        while current != previous:
            time.sleep(0.5)
            previous, current = current, self.vllm_requests()
        return current


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generation]:
    if not LLM_PYTHON.exists() or not MODEL.is_dir():
        pytest.fail(f"{LLM_PYTHON} or {MODEL} missing: run `make setup` (the e2e tests need vLLM and SmolLM2)")
    home = tmp_path_factory.mktemp("generation")
    llm = LLMServer(
        LLMServerConfig(
            python=str(LLM_PYTHON), model=str(MODEL), served_model_name="kb-llm", host="127.0.0.1",
            port=free_port(), max_model_len=2048, dtype="auto", kv_cache_bytes=268_435_456,
            tensor_parallel_size=1, gpu_memory_utilization=0.9, cache_root=home / "vllm-cache",
            log_path=home / "vllm.log", device="cpu",
        )
    )  # fmt: skip
    llm.start(timeout_s=600)
    proxy = RecordingProxy(upstream=f"http://127.0.0.1:{llm.cfg.port}")
    proxy.start()
    try:
        settings = Settings(home=home / "var", models_dir=home / "models")
        settings.llm.base_url = f"{proxy.url}/v1"
        settings.llm.max_tokens = 48
        settings.llm.timeout_s = TIMEOUT_S
        settings.llm.retry_backoff_s = 0.2
        settings.api.ui_enabled = False
        container = Container(settings)
        results = container.ingest.ingest_paths([DATA], kb="default")
        assert all(r.status == "indexed" for r in results), results
        with TestClient(create_app(settings, container)) as client:
            yield Generation(llm=llm, proxy=proxy, client=client, settings=settings)
    finally:
        proxy.stop()
        llm.stop()


def sse(client: TestClient, payload: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    events: list[tuple[str, dict[str, object]]] = []
    with client.stream("POST", "/ask", json={**payload, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def test_stream_sends_tokens_then_citations_then_done(gen: Generation) -> None:
    before = gen.vllm_requests()
    events = sse(gen.client, {"question": "How many days of annual leave do new employees get?"})
    names = [n for n, _ in events]
    assert names[-2:] == ["citations", "done"], names
    assert len(names) > 3 and set(names[:-2]) == {"token"}, names
    streamed = "".join(str(d["text"]) for n, d in events if n == "token")
    citations, done = events[-2][1], events[-1][1]
    # The verified text is the streamed text with invalid markers (if any) removed.
    assert re.sub(r"\[\d+\]", "", str(citations["answer"])).split() == re.sub(r"\[\d+\]", "", streamed).split()
    sources = citations["sources"]
    assert isinstance(sources, list) and sources[0]["doc_id"] == "leave-policy.md"
    usage, timings = done["usage"], done["timings"]
    assert isinstance(usage, dict) and usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert isinstance(timings, dict) and 0 < timings["first_token_ms"] <= timings["total_ms"]
    assert gen.proxy.chat_requests[-1]["stream"] is True
    # vLLM counts a request when its engine finishes it, a moment after the last token may arrive.
    deadline = time.monotonic() + 10
    while gen.vllm_requests() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gen.vllm_requests() == before + 1


def test_citations_are_the_valid_cited_sources_with_document_and_page(gen: Generation) -> None:
    body = gen.client.post("/ask", json={"question": "What is the daily meal allowance for international travel?"})
    assert body.status_code == 200, body.text
    answer = body.json()
    assert not answer["degraded"] and answer["usage"]["completion_tokens"] > 0
    by_index = {s["index"]: s for s in answer["sources"]}
    cited_in_text = {int(n) for n in re.findall(r"\[(\d+)\]", answer["answer"])}
    assert cited_in_text <= set(by_index)
    assert {c["index"] for c in answer["citations"]} == cited_in_text
    for c in answer["citations"]:
        assert (c["doc_id"], c["page"], c["snippet"]) == (
            by_index[c["index"]]["doc_id"], by_index[c["index"]]["page"], by_index[c["index"]]["snippet"],
        )  # fmt: skip
    for s in answer["sentences"]:
        assert s["grounded"] == bool(s["citations"]) and set(s["citations"]) <= cited_in_text
    assert answer["grounded"] == (bool(answer["sentences"]) and all(s["grounded"] for s in answer["sentences"]))


def test_prompt_language_follows_the_question(gen: Generation) -> None:
    book = PromptBook()
    for question, lang, marker in [
        ("报销需要在多少天内提交？", "zh", "你是公司知识库助手"),
        ("How long must passwords be?", "en", "You are the company knowledge base assistant"),
    ]:
        r = gen.client.post("/ask", json={"question": question})
        assert r.status_code == 200, r.text
        sent = gen.proxy.chat_requests[-1]
        messages = sent["messages"]
        assert isinstance(messages, list)
        assert messages[0]["role"] == "system" and marker in messages[0]["content"]
        assert question in messages[-1]["content"]
        # The constrained-decoding pattern allows the refusal in the question's language only.
        pattern = json.dumps(sent["structured_outputs"], ensure_ascii=False)
        assert re.escape(book.refusal(lang)).replace("\\", "\\\\") in pattern
        if r.json()["refused"]:
            assert r.json()["answer"] == book.refusal(lang)


def test_refusal_is_answered_without_calling_the_model(gen: Generation) -> None:
    proxied, served = len(gen.proxy.chat_requests), gen.settled_vllm_requests()
    # Off-topic for the handbook (the relevance threshold refuses), and an empty knowledge base.
    for question, kb, refusal in [
        ("Who won Super Bowl 50?", "default", "Not found in the knowledge base."),
        ("How many points did the Panthers defense surrender?", "default", "Not found in the knowledge base."),
        ("停车政策是什么？", "empty_kb", "知识库中没有找到相关内容。"),
    ]:
        body = gen.client.post("/ask", json={"question": question, "kb": kb}).json()
        assert body["refused"] and body["answer"] == refusal and body["usage"]["completion_tokens"] == 0, body
        assert body["citations"] == [] and "generate_ms" not in body["timings"]
        events = sse(gen.client, {"question": question, "kb": kb})
        assert [n for n, _ in events] == ["token", "citations", "done"] and events[-1][1]["refused"] is True
    assert len(gen.proxy.chat_requests) == proxied, "kb sent the model a request for a refusal"
    assert gen.settled_vllm_requests() == served


def test_connection_errors_are_retried_until_the_server_is_back(gen: Generation) -> None:
    # A second proxy that opens its port only after the first attempt failed: a restarting server.
    late = RecordingProxy(upstream=f"http://127.0.0.1:{gen.llm.cfg.port}")
    generator = OpenAIGenerator(
        base_url=f"{late.url}/v1", api_key="EMPTY", model="kb-llm", max_tokens=8, temperature=0.0,
        timeout_s=TIMEOUT_S, retries=4, backoff_s=0.5,
    )  # fmt: skip
    starter = threading.Timer(0.8, late.start)
    starter.start()
    try:
        result = asyncio.run(generator.generate([ChatMessage(role="user", content="Say hello.")]))
    finally:
        starter.join()
        late.stop()
    assert result.usage.completion_tokens > 0
    assert len(late.chat_requests) == 1


def test_model_server_down_gives_degraded_answers_within_the_timeout(gen: Generation) -> None:
    """Runs last: stops the vLLM the module started."""
    assert gen.client.get("/readyz").json()["components"]["llm"] == "up"
    gen.llm.stop()
    ready = gen.client.get("/readyz").json()
    assert ready["components"]["llm"] == "down" and ready["status"] == "degraded"

    t = time.monotonic()
    body = gen.client.post("/ask", json={"question": "How long must passwords be?"}).json()
    assert time.monotonic() - t < TIMEOUT_S
    assert body["degraded"] and not body["refused"] and "unavailable" in body["message"]
    assert body["sources"][0]["doc_id"] == "it-security-policy.docx" and body["citations"] == body["sources"]

    # Unreachable altogether (connection refused, retried with backoff): still degraded, still in time.
    gen.proxy.stop()
    t = time.monotonic()
    events = sse(gen.client, {"question": "报销需要在多少天内提交？"})
    assert time.monotonic() - t < TIMEOUT_S
    assert [n for n, _ in events] == ["token", "citations", "done"]
    assert events[-1][1]["degraded"] is True
    sources = events[1][1]["sources"]
    assert isinstance(sources, list) and sources[0]["doc_id"] == "expense-policy-zh.md"
