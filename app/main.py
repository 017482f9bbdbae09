"""The FastAPI application: `create_app(settings)` builds everything and puts it on app.state."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from starlette.routing import Route

from app.api import ask, health, openai_compat, search
from app.auth.middleware import AuthMiddleware, public_paths
from app.container import Container
from app.errors import install_error_handlers
from app.mcp_server import HttpMcp
from app.settings import Settings
from app.worker import run_worker

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, container: Container | None = None) -> FastAPI:
    settings = settings or Settings()
    container = container or Container(settings)
    mcp = HttpMcp(container)

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
        async with mcp.running():
            yield
        stop.set()
        if worker is not None:
            worker.join(timeout=30)
        await container.generator.close()

    app = FastAPI(
        title="kb",
        description="A RAG knowledge base: grounded answers with citations from company documents.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.container = container
    app.state.settings = settings
    install_error_handlers(app)
    # Added first, so it runs inside the request-id middleware below (Starlette wraps in reverse order).
    ui_path = "/ui" if settings.api.ui_enabled else None
    app.add_middleware(AuthMiddleware, is_public=public_paths(ui_path=ui_path, docs_public=settings.api.docs_public))

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
    app.include_router(openai_compat.router)
    # The MCP endpoint (streamable HTTP): authenticated by the AuthMiddleware like every other route.
    # A Route, not a Mount: a Mount would redirect /mcp to /mcp/. Starlette treats a non-function endpoint as
    # an ASGI app.
    app.router.routes.append(Route("/mcp", endpoint=mcp.app, include_in_schema=False))

    if settings.api.ui_enabled:
        from ui.chat import mount_ui

        mount_ui(app, api_url=settings.api_url, path="/ui")
    return app
