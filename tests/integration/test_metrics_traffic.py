"""/metrics after scripted traffic through the real app: MiniLM, Milvus Lite, SQLite keys, and a model
server address where nothing listens, so every answer degrades to passages. Each series is compared before
and after, so the test checks the amounts, not only that a name appears."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.access.roles import Role
from app.answers.service import AnswerService
from app.container import Container
from app.main import create_app
from app.settings import Settings
from core.procs import free_port
from core.types import Chunk
from tests.fakes import FakeGenerator
from tests.unit.test_metrics import Samples, samples, value

pytestmark = pytest.mark.integration

CANTEEN = "The office canteen opens at 8 am and serves breakfast until 10 am."
PARKING = "Parking permits for the main office cost 30 euros per month."
QUESTION = "When does the office canteen open for breakfast?"


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    home = tmp_path_factory.mktemp("metrics")
    settings = Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False},  # type: ignore[arg-type]
        ingest={"worker_in_api": False}, api={"ui_enabled": False},  # type: ignore[arg-type]
        # The model's path (down here, so answers are degraded), not the extractive default.
        llm={"base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_retries": 0,  # type: ignore[arg-type]
             "answer_mode": "generative"},
    )  # fmt: skip
    c = Container(settings)
    chunks = [
        Chunk(chunk_id=Chunk.make_id(doc, 1, 0), doc_id=doc, text=text, title=doc, acl_groups=["public"])
        for doc, text in (("canteen.md", CANTEEN), ("parking.md", PARKING))
    ]
    c.store.upsert("default", chunks, c.embedder.embed([ch.text for ch in chunks], "passage"))
    c.store.flush("default")
    yield c
    c.store.close()


def scrape(client: TestClient, secret: str) -> Samples:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    return samples(r.text)


def sse(text: str) -> list[tuple[str, dict[str, object]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_degraded_traffic_moves_the_expected_series(kb: Container) -> None:
    client = TestClient(create_app(kb.settings, kb))
    admin = kb.keys.create(name="metrics-admin", role=Role.admin, kbs=["*"])
    auth = {"Authorization": f"Bearer {admin.secret}"}
    before = scrape(client, admin.secret)

    whole = client.post("/ask", json={"question": QUESTION}, headers=auth)
    assert whole.status_code == 200 and whole.json()["degraded"] is True
    streamed = client.post("/ask", json={"question": QUESTION, "stream": True}, headers=auth)
    assert streamed.status_code == 200
    assert [name for name, _ in sse(streamed.text)] == ["token", "citations", "done"]
    found = client.post("/search", json={"query": QUESTION}, headers=auth)
    assert found.status_code == 200 and found.json()["hits"][0]["doc_id"] == "canteen.md"
    assert client.post("/search", json={"query": QUESTION}).status_code == 401

    after = scrape(client, admin.secret)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "kb_http_requests_total"
    assert delta(requests, method="POST", route="/ask", status="200", role="admin") == 2
    assert delta(requests, method="POST", route="/search", status="200", role="admin") == 1
    assert delta(requests, method="POST", route="/search", status="401", role="none") == 1
    assert delta("kb_http_request_duration_seconds_count", method="POST", route="/ask") == 2

    stages = "kb_stage_duration_seconds_count"
    for stage in ("embed", "search", "relevance", "context", "total"):
        assert delta(stages, endpoint="ask", stage=stage) == 2, stage
    for stage in ("embed", "search", "context"):
        assert delta(stages, endpoint="search", stage=stage) == 1, stage
    # The model was never reached: no generation stage, and the answers are counted as degraded.
    assert delta(stages, endpoint="ask", stage="generate") == 0
    assert delta("kb_answers_total", kb="default", outcome="degraded") == 2
    assert delta("kb_component_errors_total", component="model_server", kind="error") == 2
    # Degraded answers used no model tokens; the series exists for the key and moved by exactly that.
    series = ("kb_llm_tokens_total", frozenset({("direction", "in"), ("kb", "default"), ("key", "metrics-admin")}))
    assert series in after
    assert delta("kb_llm_tokens_total", direction="in", kb="default", key="metrics-admin") == 0
    # Three retrievals (two answers, one search), each with both chunks; cosine scores of a good match.
    assert delta("kb_retrieval_hits_count") == 3
    assert delta("kb_retrieval_hits_sum") == 6
    top = {kind for (name, labels) in after for key, kind in labels if name == "kb_retrieval_top_score_count"}
    assert top and delta("kb_retrieval_top_score_count", score_kind=top.pop()) == 3
    assert value(after, "kb_answers_in_flight") == 0


def test_tokens_and_grounded_answers_are_counted_per_key(kb: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same app and retrieval with a scripted model, so that answers carry token usage.
    generator = FakeGenerator("The canteen opens at 8 am [1].")
    service = AnswerService(
        query=kb.query, generator=generator, prompts=kb.prompts, top_k=3, citation_guard=False,
        support=kb.support, answer_mode="generative", observer=kb.metrics,
    )  # fmt: skip
    monkeypatch.setattr(kb, "answers", service)
    client = TestClient(create_app(kb.settings, kb))
    admin = kb.keys.create(name="tokens-admin", role=Role.admin, kbs=["*"])
    staff = kb.keys.create(name="tokens-staff", role=Role.employee, kbs=["default"])
    before = scrape(client, admin.secret)

    r = client.post("/ask", json={"question": QUESTION}, headers={"Authorization": f"Bearer {staff.secret}"})
    assert r.status_code == 200 and r.json()["grounded"] is True
    whole = r.json()["usage"]
    r = client.post(
        "/ask", json={"question": QUESTION, "stream": True}, headers={"Authorization": f"Bearer {staff.secret}"}
    )
    done = sse(r.text)[-1][1]
    streamed = done["usage"]
    assert isinstance(streamed, dict)

    after = scrape(client, admin.secret)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    tokens = "kb_llm_tokens_total"
    assert whole["prompt_tokens"] > 0 and whole["completion_tokens"] > 0
    assert delta(tokens, direction="in", kb="default", key="tokens-staff") == (
        whole["prompt_tokens"] + streamed["prompt_tokens"]
    )
    assert delta(tokens, direction="out", kb="default", key="tokens-staff") == (
        whole["completion_tokens"] + streamed["completion_tokens"]
    )
    assert delta("kb_answers_total", kb="default", outcome="grounded") == 2
    assert delta("kb_stage_duration_seconds_count", endpoint="ask", stage="generate") == 2
    assert delta("kb_stage_duration_seconds_count", endpoint="ask", stage="first_token") == 1
    assert delta("kb_http_requests_total", method="POST", route="/ask", status="200", role="employee") == 2
