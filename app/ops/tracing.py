"""OpenTelemetry tracing, off by default (`KB_TRACING__ENABLED`).

kb's own code opens its spans through opentelemetry-api (core/tracing.py: a span per answer stage and per
ingested file); this module installs the SDK that records and exports them over OTLP/HTTP, and turns on
FastAPI's own request spans, which those stages belong to. Trace ids go into the JSON logs (`trace_id`,
app/ops/logs.py) and into every response (`X-Trace-Id`), beside the request id.
"""

from __future__ import annotations

import logging

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import format_trace_id
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import TracingSettings

log = logging.getLogger(__name__)

TRACE_HEADER = "x-trace-id"
_TRACES_PATH = "/v1/traces"


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a collector's base URL (the exporter takes the full URL)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith(_TRACES_PATH) else endpoint + _TRACES_PATH


def build_provider(settings: TracingSettings, exporter: SpanExporter | None = None) -> TracerProvider:
    """A tracer provider for the settings: the service's name, the sample ratio for traces no caller decided,
    and a batching OTLP/HTTP exporter (or `exporter`)."""
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Without an endpoint the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself.
        exporter = OTLPSpanExporter(endpoint=traces_url(settings.otlp_endpoint) if settings.otlp_endpoint else None)
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure_tracing(settings: TracingSettings) -> TracerProvider | None:
    """Install a tracer provider for this process when tracing is on; the one installed, or None when off.

    OpenTelemetry has one provider per process, and libraries (kb's stages among them) find it globally.
    One installed already (by `opentelemetry-instrument`, or an earlier app in the same process) is kept."""
    if not settings.enabled:
        return None
    installed = trace.get_tracer_provider()
    if isinstance(installed, TracerProvider):
        log.info("tracing: using the tracer provider already installed")
        return installed
    provider = build_provider(settings)
    trace.set_tracer_provider(provider)
    log.info(
        "tracing on: service %s, sample ratio %s, OTLP endpoint %s",
        settings.service_name, settings.sample_ratio, settings.otlp_endpoint or "(OTEL_EXPORTER_OTLP_* or default)",
    )  # fmt: skip
    return provider


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, or None when nothing is traced."""
    context = trace.get_current_span().get_span_context()
    return format_trace_id(context.trace_id) if context.is_valid else None


def fastapi_telemetry(settings: TracingSettings) -> TelemetryConfig:
    """FastAPI's own OpenTelemetry (`FastAPI(telemetry=...)`): the server span of each request, continuing a
    caller's `traceparent`, named by route template. Its metrics and log events stay off: kb's metrics are
    Prometheus' and its logs are JSON lines. Its spans around dependencies and the endpoint stay off too, so
    that an answer's stages (core/tracing.py) are the request span's own children."""
    return TelemetryConfig(tracing=settings.enabled, metrics=False, logs=False, operation_spans=False)


class TraceIds:
    """Puts the request's trace id in the `X-Trace-Id` response header, beside `X-Request-Id`, and the request
    id on the request's span, so that either one finds the other. Pure ASGI: streamed answers pass through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        span = trace.get_current_span()
        trace_id = current_trace_id()
        if scope["type"] != "http" or trace_id is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        # For the handler of unexpected errors, which runs outside every middleware.
        state["trace_id"] = trace_id

        async def send_with_trace_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[TRACE_HEADER] = trace_id
                # Now: FastAPI ends the span with the response's last byte, before this middleware returns.
                if state.get("request_id"):
                    span.set_attribute("kb.request_id", str(state["request_id"]))
            await send(message)

        await self.app(scope, receive, send_with_trace_id)
