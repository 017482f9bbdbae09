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
    # 200 even with the model down: /ask still serves passages (degraded mode), so the instance should
    # stay in rotation; "status" and "components" say what works.
    generator = container.generator
    llm_up = await generator.ready()
    body = {
        "status": "ready" if llm_up else "degraded",
        "components": {"llm": "up" if llm_up else "down"},
        "llm": {"base_url": generator.base_url, "model": generator.model, "max_tokens": generator.max_tokens},
    }
    return JSONResponse(body, status_code=200)
