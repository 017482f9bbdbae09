"""The FastAPI application: `create_app(settings)` builds everything and puts it on app.state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from app.access import me_router
from app.access import router as admin_keys
from app.access.middleware import AuthMiddleware, public_paths
from app.answers import router as ask
from app.answers import search_router as search
from app.audit import router as audit
from app.container import Container
from app.documents import job_events_router as job_progress
from app.documents import jobs_router as jobs_cancel
from app.documents import router as documents
from app.documents.uploads import UploadLimits
from app.errors import ERROR_RESPONSES, install_error_handlers
from app.feedback import router as feedback
from app.integrations.mcp.server import HttpMcp
from app.integrations.openai import router as openai_compat
from app.kbs import router as admin_kbs
from app.ops import health_router as health
from app.ops import metrics_router as metrics
from app.ops.limits import AnswerSlots, BodySizeLimit
from app.ops.metrics import MetricsMiddleware
from app.ops.ratelimit import RateLimiter
from app.ops.readiness import Components, Readiness, component_checks
from app.ops.request_middleware import RequestContext
from app.ops.tracing import TraceIds, configure_tracing, fastapi_telemetry
from app.settings import Settings
from app.worker import WorkerSupervisor, run_worker

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, container: Container | None = None) -> FastAPI:
    settings = settings or Settings()
    container = container or Container(settings)
    mcp = HttpMcp(container)
    tracer_provider = configure_tracing(settings.tracing)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container.warm_up()
        worker: WorkerSupervisor | None = None
        if settings.ingest.worker_in_api:
            # Jobs queued by `kb ingest` (or the API) are worked here while the server runs, and retired
            # versions purged when due; a worker that dies is started again (and /readyz says it is down).
            worker = WorkerSupervisor(lambda stop: run_worker(container, stop))
            worker.start()
        app.state.worker = worker
        log.info("kb API ready")
        async with mcp.running():
            yield
        if worker is not None:
            worker.stop(timeout_s=30)
        await container.generator.close()
        app.state.rate_limiter.close()
        if tracer_provider is not None:
            tracer_provider.force_flush()

    app = FastAPI(
        title="kb",
        description="A RAG knowledge base: grounded answers with citations from company documents.",
        version="0.1.0",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        telemetry=fastapi_telemetry(settings.tracing),
    )
    app.state.container = container
    app.state.settings = settings
    app.state.worker = None  # the supervised ingestion worker, when the API runs one
    # Per process: the rate limits (shared through Redis when one is configured) and the answers in flight.
    app.state.rate_limiter = RateLimiter.from_settings(settings, container.metrics.observe_rate_limited)
    app.state.answer_slots = AnswerSlots(settings.limits.answers_in_flight)
    app.state.gate = container.gate(app.state.rate_limiter, app.state.answer_slots)
    timeout_s = settings.limits.readiness_timeout_s
    components = Components(
        warmed_up=lambda: container.warmed_up, engine=lambda: container.registry.engine, store=lambda: container.store,
        embedder=lambda: container.embedder, generator=lambda: container.generator, worker=lambda: app.state.worker,
    )  # fmt: skip
    checks = component_checks(components, timeout_s=timeout_s)
    app.state.readiness = Readiness(checks, timeout_s=timeout_s)
    install_error_handlers(app)
    # Added first, so innermost: its 413 carries the request id. The UI's
    # routes take file uploads: their bodies may be one file of the upload size plus the multipart
    # framing, and Gradio checks the file itself against max_file_size.
    upload_bytes = settings.limits.max_upload_mb * 1024 * 1024
    ui_body_bytes = upload_bytes + 64 * 1024
    # /documents uploads: as many files of the upload size as a request may carry, or one to replace a
    # document; the upload parser holds each file to the per-file size as it streams in.
    uploads = documents.upload_limits(settings)
    body_limits = {
        "/ui": ui_body_bytes,
        "POST /documents": uploads.body_bytes(),
        "PUT /documents": UploadLimits(uploads.max_file_bytes, 1).body_bytes(),
    }
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes, limits=body_limits)
    # Added after the body limit and before the request-id middleware: a request without a valid key is
    # refused before its body is read, and the refusal carries the request id.
    ui_path = "/ui" if settings.api.ui_enabled else None
    is_public = public_paths(
        ui_path=ui_path, docs_public=settings.api.docs_public, metrics_public=settings.api.metrics_public
    )
    app.add_middleware(AuthMiddleware, is_public=is_public)

    # Runs before the others: every request gets its id before anything can refuse it.
    app.add_middleware(RequestContext, audit=lambda: container.audit)
    if settings.tracing.enabled:
        # Outside the request id middleware, so that it can put the request id on the request's span.
        app.add_middleware(TraceIds)
    # Added last, so outermost: it sees the status the client got and the principal auth left behind.
    app.add_middleware(MetricsMiddleware, metrics=container.metrics)

    app.include_router(health.router)
    app.include_router(ask.router)
    app.include_router(search.router)
    app.include_router(me_router.router)
    app.include_router(admin_keys.router)
    app.include_router(audit.router)
    app.include_router(admin_kbs.router)
    app.include_router(metrics.router)
    app.include_router(openai_compat.router)
    app.include_router(documents.router)
    app.include_router(job_progress.router)
    app.include_router(feedback.router)
    app.include_router(jobs_cancel.router)
    # The MCP endpoint (streamable HTTP): authenticated by the AuthMiddleware like every other route.
    # A Route, not a Mount: a Mount would redirect /mcp to /mcp/. Starlette treats a non-function endpoint as
    # an ASGI app.
    app.router.routes.append(Route("/mcp", endpoint=mcp.app, include_in_schema=False))

    if settings.api.ui_enabled:
        from ui.app import mount_ui

        mount_ui(app, api_url=settings.api_url, path="/ui", max_file_size=upload_bytes)
    return app
