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
from httpx_sse import connect_sse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.access.roles import Role
from app.container import Container
from app.main import create_app
from app.settings import Settings
from core.procs import free_port
from core.types import ChatMessage
from serving.generator import OpenAIGenerator
from serving.launcher import LLMServer
from serving.prompts import PromptBook
from tests.conftest import DATA
from tests.e2e.conftest import SERVED_NAME

pytestmark = pytest.mark.e2e

TIMEOUT_S = 30.0
# Enough for the three cited sentences the citation guard allows: a cut-off answer would lose its markers.
MAX_TOKENS = 200


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
    # An admin's headers: /readyz names its components to admins only.
    admin: dict[str, str]

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
def gen(llm_server: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generation]:
    home = tmp_path_factory.mktemp("generation")
    proxy = RecordingProxy(upstream=f"http://127.0.0.1:{llm_server.cfg.port}")
    proxy.start()
    try:
        settings = Settings(home=home / "var", models_dir=home / "models")
        settings.llm.base_url = f"{proxy.url}/v1"
        settings.llm.served_model_name = SERVED_NAME
        settings.llm.max_tokens = MAX_TOKENS
        settings.llm.timeout_s = TIMEOUT_S
        settings.llm.retry_backoff_s = 0.2
        # These tests check the wiring to the model: its own text, never replaced by quotes from the sources.
        settings.llm.answer_mode = "generative"
        settings.api.ui_enabled = False
        container = Container(settings)
        results = container.ingest.ingest_paths([DATA], kb="default", acl_groups=["staff"])
        assert all(r.status == "indexed" for r in results), results
        key = container.keys.create(name="employee", role=Role.employee, groups=["staff"], kbs=["default", "empty_kb"])
        headers = {"Authorization": f"Bearer {key.secret}"}
        admin = container.keys.create(name="admin", role=Role.admin, kbs=["*"])
        with TestClient(create_app(settings, container), headers=headers) as client:
            yield Generation(
                llm=llm_server, proxy=proxy, client=client, settings=settings,
                admin={"Authorization": f"Bearer {admin.secret}"},
            )  # fmt: skip
    finally:
        proxy.stop()


def sse(client: TestClient, payload: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    events: list[tuple[str, dict[str, object]]] = []
    with connect_sse(client, "POST", "/ask", json={**payload, "stream": True}) as source:
        assert source.response.status_code == 200, source.response.read()
        assert source.response.headers["content-type"].startswith("text/event-stream")
        events.extend((event.event, event.json()) for event in source.iter_sse())
    return events


@dataclass(frozen=True)
class PromptSource:
    title: str
    page: int | None
    text: str


def prompt_sources(request: dict[str, object]) -> dict[int, PromptSource]:
    """The numbered sources of a chat request as the model read them ("[n] Title (page p)" then the text),
    parsed from what went over the wire: the expectation for each [n] marker, computed apart from kb."""
    messages = request["messages"]
    assert isinstance(messages, list)
    user = str(messages[-1]["content"])
    starts: list[int] = []
    while found := re.compile(rf"^\[{len(starts) + 1}\] ", re.M).search(user, starts[-1] if starts else 0):
        starts.append(found.start())
    question = list(re.finditer(r"^(?:Question:|问题：)", user, re.M))[-1].start()
    out: dict[int, PromptSource] = {}
    for n, (start, end) in enumerate(zip(starts, [*starts[1:], question], strict=True), start=1):
        header, _, text = user[start:end].partition("\n")
        parsed = re.fullmatch(r"\[\d+\] (.*?)(?: \(page (\d+)\)|（第 (\d+) 页）)?", header)
        assert parsed is not None, header
        title, en_page, zh_page = parsed.groups()
        page = en_page or zh_page
        out[n] = PromptSource(title, int(page) if page else None, text.strip())
    return out


def test_stream_sends_tokens_then_citations_then_done(gen: Generation) -> None:
    before = gen.vllm_requests()
    events = sse(gen.client, {"question": "How many days of annual leave do new employees get?"})
    names = [n for n, _ in events]
    assert names[-2:] == ["citations", "done"], names
    assert len(names) > 3 and set(names[:-2]) == {"token"}, names
    streamed = "".join(str(d["text"]) for n, d in events if n == "token")
    citations, done = events[-2][1], events[-1][1]
    # The verified text is the streamed text (the citation guard admits valid markers only).
    assert str(citations["answer"]).split() == streamed.split()
    sources = citations["sources"]
    assert isinstance(sources, list) and sources[0]["doc_id"] == "leave-policy.md"
    # The guard makes every sentence end with a marker, so the first one (far shorter than max_tokens) cites;
    # later ones may be cut off by max_tokens, so groundedness is not asserted.
    cited = citations["citations"]
    assert isinstance(cited, list) and cited, citations
    assert done["refused"] is False
    assert sorted({int(n) for n in re.findall(r"\[(\d+)\]", streamed)}) == [c["index"] for c in cited]
    usage, timings = done["usage"], done["timings"]
    assert isinstance(usage, dict) and usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0
    assert isinstance(timings, dict) and 0 < timings["first_token_ms"] <= timings["total_ms"]
    assert gen.proxy.chat_requests[-1]["stream"] is True
    # vLLM counts a request when its engine finishes it, a moment after the last token may arrive.
    deadline = time.monotonic() + 10
    while gen.vllm_requests() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert gen.vllm_requests() == before + 1


MEAL_QUESTION = "What is the daily meal allowance for international travel?"


def test_each_marker_cites_the_source_the_model_was_shown_under_that_number(gen: Generation) -> None:
    body = gen.client.post("/ask", json={"question": MEAL_QUESTION})
    assert body.status_code == 200, body.text
    answer = body.json()
    assert not answer["degraded"] and not answer["refused"] and answer["usage"]["completion_tokens"] > 0
    # The answer is on page 2 of the PDF, and retrieval shows it to the model first.
    assert (answer["sources"][0]["doc_id"], answer["sources"][0]["page"]) == ("expense-policy.pdf", 2)
    shown = prompt_sources(gen.proxy.chat_requests[-1])
    assert sorted(shown) == [s["index"] for s in answer["sources"]]
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", answer["answer"])}
    assert markers and markers <= set(shown), answer["answer"]
    assert [c["index"] for c in answer["citations"]] == sorted(markers)
    for c in answer["citations"]:
        expected = shown[c["index"]]
        assert (c["title"], c["page"]) == (expected.title, expected.page)
        assert expected.text.startswith(str(c["snippet"]).removesuffix("…"))


def test_with_one_source_the_answer_cites_the_document_that_holds_it(gen: Generation) -> None:
    body = gen.client.post("/ask", json={"question": MEAL_QUESTION, "top_k": 1})
    assert body.status_code == 200, body.text
    answer = body.json()
    assert not answer["degraded"] and not answer["refused"], answer
    assert [(c["index"], c["doc_id"], c["page"]) for c in answer["citations"]] == [(1, "expense-policy.pdf", 2)]
    assert answer["citations"] == answer["sources"]
    assert "The daily meal allowance is 60 US dollars" in answer["citations"][0]["snippet"]
    # The guard forces a marker within the first 200 characters; which sentence carries it is the model's
    # choice (a guarded "sentence" may hold several), so sentence-level grounding is not asserted.
    assert "[1]" in answer["answer"] and [1] in [s["citations"] for s in answer["sentences"]]


def test_prompt_language_follows_the_question(gen: Generation) -> None:
    book = PromptBook()
    for question, lang, other, marker in [
        ("报销需要在多少天内提交？", "zh", "en", "你是公司知识库助手"),
        ("How long must passwords be?", "en", "zh", "You are the company knowledge base assistant"),
    ]:
        r = gen.client.post("/ask", json={"question": question})
        assert r.status_code == 200, r.text
        sent = gen.proxy.chat_requests[-1]
        messages = sent["messages"]
        assert isinstance(messages, list)
        assert messages[0]["role"] == "system" and marker in messages[0]["content"]
        assert question in messages[-1]["content"]
        # The constrained-decoding pattern allows the refusal in the question's language only.
        structured = sent["structured_outputs"]
        assert isinstance(structured, dict)
        pattern = str(structured["regex"])
        assert re.escape(book.refusal(lang)) in pattern and re.escape(book.refusal(other)) not in pattern
        assert r.json()["answer"] != book.refusal(other)


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


def test_model_server_down_gives_extractive_answers_that_state_the_fact(gen: Generation) -> None:
    """Runs last: stops the vLLM the module started."""
    assert gen.client.get("/readyz", headers=gen.admin).json()["components"]["llm"] == "up"
    gen.llm.stop()
    ready = gen.client.get("/readyz", headers=gen.admin).json()
    assert ready["components"]["llm"] == "down" and ready["status"] == "degraded"

    # Still answers that state the fact: the sentences of the sources that answer, quoted with their [n].
    for question, doc_id, fact in [
        ("How many days of annual leave do new employees get?", "leave-policy.md", "15 days of paid annual leave"),
        ("How long must passwords be?", "it-security-policy.docx", "at least 14 characters"),
    ]:
        t = time.monotonic()
        body = gen.client.post("/ask", json={"question": question}).json()
        assert time.monotonic() - t < TIMEOUT_S
        assert body["degraded"] and body["extractive"] and not body["refused"] and "unavailable" in body["message"]
        assert body["sources"][0]["doc_id"] == doc_id
        first = body["answer"].splitlines()[0]
        assert fact in first and first.endswith("[1]."), body["answer"]
        assert body["sentences"][0]["grounded"] and body["sentences"][0]["citations"] == [1]
        cited = body["citations"][0]
        assert cited["doc_id"] == doc_id and any(fact in e["text"] for e in cited["evidence"])
        assert all(cited["text"][e["start"] : e["end"]] == e["text"] for e in cited["evidence"])

    # Unreachable altogether (connection refused, retried with backoff): still degraded, still in time.
    gen.proxy.stop()
    t = time.monotonic()
    events = sse(gen.client, {"question": "报销需要在多少天内提交？"})
    assert time.monotonic() - t < TIMEOUT_S
    assert [n for n, _ in events] == ["token", "citations", "done"]
    assert events[-1][1]["degraded"] is True and events[-1][1]["extractive"] is True
    sources = events[1][1]["sources"]
    assert isinstance(sources, list) and sources[0]["doc_id"] == "expense-policy-zh.md"
    assert "30天内" in str(events[0][1]["text"]) and events[0][1]["text"] == events[1][1]["answer"]
