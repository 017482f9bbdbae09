"""GET /admin/audit: the audit log, filtered and paged."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field, field_validator

from app.access.deps import Auditor
from app.audit.trail import MAX_LIMIT, AuditQuery
from app.deps import ContainerDep
from app.ops.durations import parse_moment

router = APIRouter(prefix="/admin", tags=["admin"])


class AuditFilter(BaseModel):
    since: datetime | None = Field(None, description="An ISO time (UTC unless it says) or a duration ago: 1h, 7d")
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    kb: str | None = None
    status: int | None = Field(None, ge=100, le=599)
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    # Bounded: the database's integers are 64-bit, and no audit log holds a billion rows per page walk.
    offset: int = Field(0, ge=0, le=1_000_000_000)
    order: Literal["asc", "desc"] = "asc"

    @field_validator("since", "until", mode="before")
    @classmethod
    def _moment(cls, value: object) -> object:
        return parse_moment(value) if isinstance(value, str) else value


class AuditPage(BaseModel):
    entries: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


@router.get("/audit", response_model=AuditPage)
def audit_log(params: Annotated[AuditFilter, Query()], container: ContainerDep, _auditor: Auditor) -> AuditPage:
    where = AuditQuery(
        since=params.since, until=params.until, actor=params.actor, action=params.action, kb=params.kb,
        status=params.status,
    )  # fmt: skip
    entries = container.audit.query(
        **vars(where), limit=params.limit, offset=params.offset, newest_first=params.order == "desc"
    )
    return AuditPage(
        entries=[e.as_dict() for e in entries], total=container.audit.count(where), limit=params.limit,
        offset=params.offset,
    )  # fmt: skip
