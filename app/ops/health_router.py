"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from app.access.deps import authenticate
from app.access.roles import Permission
from app.answers.models import Health, ModelServerInfo, ReadinessStatus
from app.deps import ContainerDep
from app.errors import KBError
from app.ops.readiness import Readiness

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    # Liveness only: the process answers. Whether it can serve is /readyz's question.
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=ReadinessStatus,
    responses={503: {"model": ReadinessStatus, "description": "The database, Milvus or the embedder is down"}},
)
async def readyz(request: Request, container: ContainerDep) -> JSONResponse:
    # 200 with the model or the worker down: /ask still answers (extractive answers), so the instance stays
    # in rotation and "status" says degraded. 503 when answers cannot be given at all. Which component is
    # down, and where the model server lives, is for admins: anyone else learns only the status.
    readiness: Readiness = request.app.state.readiness
    report = await readiness.check()
    body = ReadinessStatus(status=report.status)
    if _is_admin(request):
        generator = container.generator
        body.components = report.named()
        body.llm = ModelServerInfo(base_url=generator.base_url, model=generator.model, max_tokens=generator.max_tokens)
    status_code = 503 if report.status == "unavailable" else 200
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status_code)


def _is_admin(request: Request) -> bool:
    try:
        return authenticate(request).may(Permission.read_audit)
    except KBError:
        return False
    except SQLAlchemyError as exc:
        # Fail closed: a key that cannot be checked (the database is down) is shown what no key is.
        log.warning("readyz: could not check the caller's key: %s", exc)
        return False
