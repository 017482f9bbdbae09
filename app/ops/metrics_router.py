"""GET /metrics: Prometheus's text format, for admins (or, by setting, for a scraper on a private network)."""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request, Response

from app.access.deps import authenticate
from app.access.roles import Role
from app.deps import ContainerDep
from app.errors import Forbidden

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request, container: ContainerDep) -> Response:
    if not container.settings.api.metrics_public and authenticate(request).role is not Role.admin:
        raise Forbidden("the metrics need an admin key")
    # The ingestion series are read from the database: not on the event loop.
    body = await to_thread.run_sync(container.metrics.render)
    return Response(body, media_type=container.metrics.content_type)
