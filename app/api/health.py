"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import ContainerDep
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz")
async def readyz(container: ContainerDep) -> JSONResponse:
    llm_up = await container.generator.ready()
    body = {"status": "ready" if llm_up else "degraded", "components": {"llm": "up" if llm_up else "down"}}
    return JSONResponse(body, status_code=200)
