"""Traces through the real app: real MiniLM, Milvus Lite, SQLite, a cross-encoder, and a model server over a
real socket (tests/slow_llm.py). One /ask is one server span whose children are the answer's stages, in the
order they ran; one ingestion job is a span with one child per file; the trace id is in the response headers
and the access log line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_trace_id

from app.access.roles import Role
from app.container import Container
from app.main import create_app
from app.ops.logs import JSONFormatter, TraceContextFilter
from app.settings import Settings
from core.types import RelevanceThresholds
from tests.conftest import DATA
from tests.slow_llm import running_slow_llm

pytestmark = pytest.mark.integration

# The stages of a generative answer to a follow-up question, in the order they run.
STAGES = ["condense", "embed", "search", "rerank", "context", "generate"]


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, tiny_cross_encoder: Path, recorded_spans: InMemorySpanExporter
) -> Iterator[tuple[Container, TestClient, str]]:
    home = tmp_path_factory.mktemp("traced")
    with running_slow_llm() as llm:
        settings = Settings(
            home=home, models_dir=home / "models", api={"ui_enabled": False},  # type: ignore[arg-type]
            ingest={"worker_in_api": False}, tracing={"enabled": True},  # type: ignore[arg-type]
            reranker={"enabled": True, "model": str(tiny_cross_encoder), "device": "cpu"},  # type: ignore[arg-type]
            # The tiny cross-encoder's scores are random: no threshold may turn the question away.
            retrieval={"min_relevance": RelevanceThresholds.off()},  # type: ignore[arg-type]
            llm={"base_url": llm.url, "answer_mode": "generative", "citation_guard": False},  # type: ignore[arg-type]
        )  # fmt: skip
        container = Container(settings)
        results = container.ingest.ingest_paths([DATA / "it-security-policy.docx"], kb="default")
        assert [r.status for r in results] == ["indexed"]
        admin = container.keys.create(name="root", role=Role.admin, groups=[], kbs=["*"])
        with TestClient(create_app(settings, container)) as client:
            yield container, client, admin.secret


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id),
        key=lambda s: s.start_time or 0,
    )


def test_one_job_is_a_span_with_one_child_per_file(
    traced: tuple[Container, TestClient, str], recorded_spans: InMemorySpanExporter
) -> None:
    container, _, _ = traced
    recorded_spans.clear()
    files = [DATA / "leave-policy.md", DATA / "onboarding-guide.txt"]
    job_id = container.documents.submit(files, kb="default", uploads_dir=container.uploads_dir)
    container.worker().run(until_idle=True)

    spans = list(recorded_spans.get_finished_spans())
    (job,) = [s for s in spans if s.name == "ingest job"]
    assert job.attributes is not None and job.attributes["kb.job_id"] == job_id
    per_file = [s for s in spans if s.name == "ingest file"]
    assert children(spans, job) == sorted(per_file, key=lambda s: s.start_time or 0) and len(per_file) == 2
    assert sorted(str(s.attributes["kb.file"]) for s in per_file if s.attributes) == sorted(f.name for f in files)
    assert all(s.attributes and s.attributes["kb.status"] == "indexed" and s.attributes["kb.chunks"] for s in per_file)
    assert {s.context.trace_id for s in per_file} == {job.context.trace_id}


def test_one_ask_is_a_request_span_with_its_stages_as_children_in_order(
    traced: tuple[Container, TestClient, str], recorded_spans: InMemorySpanExporter
) -> None:
    _, client, secret = traced
    recorded_spans.clear()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(TraceContextFilter())
    access = logging.getLogger("kb.access")
    access.addHandler(handler)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        r = client.post(
            "/ask",
            json={"question": "And how long must they be?", "history": [
                {"role": "user", "content": "What does the security policy say about passwords?"},
                {"role": "assistant", "content": "It sets rules for passwords."},
            ]},
            headers={"Authorization": f"Bearer {secret}", "X-Request-Id": "ask-traced-1"},
        )  # fmt: skip
    finally:
        access.removeHandler(handler)
        access.setLevel(level)
    assert r.status_code == 200, r.text
    body = r.json()
    assert not body["refused"] and not body["degraded"], body

    spans = list(recorded_spans.get_finished_spans())
    (request,) = [s for s in spans if s.kind is SpanKind.SERVER]
    assert request.name == "POST /ask" and request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["kb.request_id"] == "ask-traced-1"
    stages = [s.name for s in children(spans, request)]
    # A follow-up is searched twice (its rewrite beside the question as asked), embedded in one batch.
    assert list(dict.fromkeys(name for name in stages if name in STAGES)) == STAGES, stages
    assert stages.count("embed") == 1 and stages.count("search") == stages.count("rerank") == 2, stages
    # The spans and the timings the answer reports (and the latency histogram observes) are the same stages.
    assert {f"{name}_ms" for name in stages} <= set(body["timings"]), (stages, body["timings"])

    trace_id = format_trace_id(request.context.trace_id)
    assert r.headers["x-trace-id"] == trace_id and r.headers["x-request-id"] == "ask-traced-1"
    (line,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert line["request_id"] == "ask-traced-1" and line["trace_id"] == trace_id


def test_a_callers_traceparent_is_continued_and_errors_carry_the_trace_id(
    traced: tuple[Container, TestClient, str], recorded_spans: InMemorySpanExporter
) -> None:
    _, client, secret = traced
    recorded_spans.clear()
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = client.post(
        "/ask", json={"question": ""},
        headers={"Authorization": f"Bearer {secret}", "traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01"},
    )  # fmt: skip
    assert r.status_code == 422 and r.headers["x-trace-id"] == caller_trace
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
    (request,) = [s for s in recorded_spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert format_trace_id(request.context.trace_id) == caller_trace


def test_without_tracing_responses_carry_no_trace_id(traced: tuple[Container, TestClient, str]) -> None:
    container, _, secret = traced
    settings = container.settings.model_copy(
        update={"tracing": container.settings.tracing.model_copy(update={"enabled": False})}
    )
    plain = TestClient(create_app(settings, container))  # the container is warm already
    r = plain.get("/readyz", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200 and "x-trace-id" not in r.headers and "x-request-id" in r.headers
