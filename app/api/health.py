"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.auth.deps import authenticate
from app.auth.roles import Permission
from app.deps import ContainerDep
from app.errors import KBError
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz")
async def readyz(request: Request, container: ContainerDep) -> JSONResponse:
    # 200 even with the model down: /ask still serves passages (degraded mode), so the instance should
    # stay in rotation; "status" says so. Which component is down, and where it lives, is for admins:
    # anyone else learns only up or degraded.
    generator = container.generator
    llm_up = await generator.ready()
    # The API's ingestion worker, when it runs one: down, queued jobs wait (its supervisor restarts it).
    worker = request.app.state.worker
    worker_up = worker is None or worker.up
    body: dict[str, object] = {"status": "ready" if llm_up and worker_up else "degraded"}
    if _is_admin(request):
        components = {"llm": "up" if llm_up else "down"}
        if worker is not None:
            components["worker"] = "up" if worker_up else "down"
        body["components"] = components
        body["llm"] = {"base_url": generator.base_url, "model": generator.model, "max_tokens": generator.max_tokens}
    return JSONResponse(body, status_code=200)


def _is_admin(request: Request) -> bool:
    try:
        return authenticate(request).may(Permission.read_audit)
    except KBError:
        return False
