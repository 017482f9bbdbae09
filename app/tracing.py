"""OpenTelemetry tracing, off by default (`KB_TRACING__ENABLED`).

kb's own code opens its spans through opentelemetry-api (core/tracing.py: a span per answer stage and per
ingested file); this module installs the SDK that records and exports them, over OTLP/HTTP, and traces each
HTTP request as the server span those stages belong to. Trace ids go into the JSON logs (`trace_id`) and
into every response (`X-Trace-Id`), beside the request id.
"""

from __future__ import annotations

import logging

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id
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


class TracingMiddleware:
    """A server span per HTTP request, continuing the caller's trace when it sends a `traceparent`; the
    answer's stage spans are its children. Pure ASGI, so streamed answers are inside their span; outside the
    request-id middleware, so the access log line carries the trace id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._tracer = trace.get_tracer("kb.http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = str(scope["method"])
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])}
        with self._tracer.start_as_current_span(
            method, context=propagate.extract(carrier), kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": str(scope["path"])},
        ) as span:  # fmt: skip
            trace_id = current_trace_id()
            state = scope.setdefault("state", {})
            if trace_id:
                # For the handler of unexpected errors, which runs outside every middleware.
                state["trace_id"] = trace_id

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(StatusCode.ERROR)
                    if trace_id:
                        MutableHeaders(scope=message)[TRACE_HEADER] = trace_id
                await send(message)

            try:
                await self.app(scope, receive, send_traced)
            finally:
                # The route template, not the raw path: span names stay few (one per endpoint).
                template = getattr(scope.get("route"), "path", None)
                if template:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                if state.get("request_id"):
                    span.set_attribute("kb.request_id", str(state["request_id"]))
