"""The tracing seam (core/tracing.stage), the provider the settings build, and trace ids in the JSON logs."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.trace import StatusCode, format_trace_id

from app.ops.logs import JSONFormatter, TraceContextFilter
from app.ops.tracing import build_provider, traces_url
from app.settings import TracingSettings
from core.tracing import stage, tracer


def test_a_stage_is_timed_and_traced(recorded_spans: InMemorySpanExporter) -> None:
    recorded_spans.clear()
    timings: dict[str, float] = {"embed_ms": 1.0}
    with tracer.start_as_current_span("request") as request:
        with stage(timings, "embed"):
            pass
        with stage(timings, "search"):
            pass
    spans = {s.name: s for s in recorded_spans.get_finished_spans()}
    assert spans["embed"].parent is not None and spans["embed"].parent.span_id == request.get_span_context().span_id
    assert spans["search"].parent.span_id == request.get_span_context().span_id  # type: ignore[union-attr]
    # Time adds up across runs of a stage; a new stage gets its own key.
    assert timings["embed_ms"] > 1.0 and timings["search_ms"] >= 0


def test_a_stage_that_fails_records_the_error_and_no_time(recorded_spans: InMemorySpanExporter) -> None:
    recorded_spans.clear()
    timings: dict[str, float] = {}
    for current in (True, False):
        with pytest.raises(ConnectionError), stage(timings, "rerank", current=current):
            raise ConnectionError("rerank service down")
    assert timings == {}
    spans = recorded_spans.get_finished_spans()
    assert [s.name for s in spans] == ["rerank", "rerank"]
    assert all(s.status.status_code is StatusCode.ERROR for s in spans)


def test_the_provider_follows_the_settings() -> None:
    provider = build_provider(
        TracingSettings(enabled=True, service_name="kb-eu", sample_ratio=0.25), exporter=InMemorySpanExporter()
    )
    assert provider.resource.attributes["service.name"] == "kb-eu"
    assert isinstance(provider.sampler, ParentBased) and "0.25" in provider.sampler.get_description()
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/v1/traces/") == "http://collector:4318/v1/traces"
    provider.shutdown()


def test_log_lines_written_in_a_span_carry_its_trace_id(recorded_spans: InMemorySpanExporter) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JSONFormatter())
    handler.addFilter(TraceContextFilter())
    log = logging.getLogger("kb.test.tracing")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("outside")
        with tracer.start_as_current_span("request") as span:
            log.info("inside")
    finally:
        log.removeHandler(handler)
    outside, inside = (json.loads(line) for line in out.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == format_trace_id(span.get_span_context().trace_id) and len(inside["span_id"]) == 16
