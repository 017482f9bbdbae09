"""The FastAPI application: `create_app(settings)` builds everything and puts it on app.state."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from app.api import ask, health, search
from app.container import Container
from app.errors import install_error_handlers
from app.limits import AnswerSlots, BodySizeLimit
from app.ratelimit import RateLimiter
from app.settings import Settings
from app.worker import run_worker

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, container: Container | None = None) -> FastAPI:
    settings = settings or Settings()
    container = container or Container(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        container.warm_up()
        stop = threading.Event()
        worker: threading.Thread | None = None
        if settings.ingest.worker_in_api:
            # Jobs queued by `kb ingest` (or the API) are worked here while the server runs, and retired
            # versions purged when due.
            worker = threading.Thread(target=run_worker, args=(container, stop), name="kb-ingest-worker", daemon=True)
            worker.start()
        log.info("kb API ready")
        yield
        stop.set()
        if worker is not None:
            worker.join(timeout=30)
        await container.generator.close()
        app.state.rate_limiter.close()

    app = FastAPI(
        title="kb",
        description="A RAG knowledge base: grounded answers with citations from company documents.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.container = container
    app.state.settings = settings
    # Per process: the rate limits (shared through Redis when one is configured) and the answers in flight.
    app.state.rate_limiter = RateLimiter.from_settings(settings)
    app.state.answer_slots = AnswerSlots(settings.limits.answers_in_flight)
    install_error_handlers(app)
    # Added before the request-id middleware, so inside it: its 413 carries the request id. The UI's
    # routes take file uploads: their bodies may be one file of the upload size plus the multipart
    # framing, and Gradio checks the file itself against max_file_size.
    upload_bytes = settings.limits.max_upload_mb * 1024 * 1024
    ui_body_bytes = upload_bytes + 64 * 1024
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes, limits={"/ui": ui_body_bytes})

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid[:64]
        response = await call_next(request)
        response.headers["x-request-id"] = request.state.request_id
        return response

    app.include_router(health.router)
    app.include_router(ask.router)
    app.include_router(search.router)

    if settings.api.ui_enabled:
        from ui.chat import mount_ui

        mount_ui(app, api_url=settings.api_url, path="/ui", max_file_size=upload_bytes)
    return app
