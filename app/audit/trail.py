"""The audit log: who did what, from where, to which knowledge base and document, with what outcome.

One row per audited event in the `audit_log` table (app layer, on the registry's database). The actions
(`Action`) and what each row carries:

- `ask`, `search`: kb; detail `question` (or `question_sha256` when `security.audit_questions` is "hash"),
  `docs` (the document ids returned, in order), and for /ask `refused`/`degraded`/`withheld`/`stream`.
  A question refused for a sensitive term is the same action with status 400 and `refused: "sensitive_term"`.
- `upload`, `delete`, `acl_change`: kb, target = document id; detail what changed (groups before/after).
  An upload of several files has no target; its detail lists the document ids and the job id.
- `feedback`: kb, target = answer id; detail rating and feedback id.
- `key_create`, `key_revoke`, `key_rotate`: target = key name; detail role, groups, kbs, cidrs, expiry.
- `kb_create`, `kb_update`, `kb_delete`: kb (and target) = knowledge base name.
- `unauthorized` (401), `forbidden` (403), `rate_limited` (429): recorded for every route by
  `app.ops.request_middleware.RequestContext`; detail method, path (and the key id a refused key named).

`actor` is the key's name, "anonymous" (anonymous access), "local-admin" (the `kb` command line on the
server's machine) or "" when nobody could be identified (no key, a wrong one).

Request handlers call `await audit_request(request, Action.x, kb=..., target=..., status=..., detail=...)`;
local code calls `AuditLog.record(Action.x, actor=Actor.local_admin(), ...)`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
from anyio import to_thread
from sqlalchemy import JSON, DateTime, Integer, Select, String, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from app.db.base import AppBase, create_app_tables

if TYPE_CHECKING:
    from fastapi import Request


class Action(StrEnum):
    ask = "ask"
    search = "search"
    upload = "upload"
    acl_change = "acl_change"
    delete = "delete"
    feedback = "feedback"
    job_cancel = "job_cancel"
    key_create = "key_create"
    key_revoke = "key_revoke"
    key_rotate = "key_rotate"
    kb_create = "kb_create"
    kb_update = "kb_update"
    kb_delete = "kb_delete"
    kb_reindex = "kb_reindex"
    unauthorized = "unauthorized"
    forbidden = "forbidden"
    rate_limited = "rate_limited"


# The refusals recorded for every route, whichever handler or middleware produced them.
REFUSALS: Mapping[int, Action] = {401: Action.unauthorized, 403: Action.forbidden, 429: Action.rate_limited}

MAX_LIMIT = 1000


def _utc(moment: datetime) -> datetime:
    # SQLite returns naive datetimes even for timezone-aware columns.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class AuditRow(AppBase):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    request_id: Mapped[str] = mapped_column(String(64), default="")
    actor: Mapped[str] = mapped_column(String(128), default="", index=True)
    role: Mapped[str] = mapped_column(String(16), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(32), index=True)
    kb: Mapped[str] = mapped_column(String(64), default="", index=True)
    target: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Caller(Protocol):
    """Whom a request is attributed to (app.access.principal.Principal): the audit trail sits below access."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


@dataclass(frozen=True)
class Actor:
    """Who an event is attributed to, and the request it came with."""

    name: str = ""
    role: str = ""
    ip: str = ""
    request_id: str = ""

    @classmethod
    def of_principal(cls, principal: Caller | None, *, ip: str = "", request_id: str = "") -> Actor:
        if principal is None:
            return cls(ip=ip, request_id=request_id)
        return cls(name=principal.name, role=str(principal.role), ip=ip, request_id=request_id)

    @classmethod
    def local_admin(cls) -> Actor:
        # app.access.principal.local_admin(): trusted local code, the CLI on the server's own machine.
        return cls(name="local-admin", role="admin")

    @classmethod
    def of_request(cls, request: Request) -> Actor:
        return cls.of_principal(
            getattr(request.state, "principal", None),
            ip=request.client.host if request.client else "",
            request_id=str(getattr(request.state, "request_id", "")),
        )


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    request_id: str
    actor: str
    role: str
    ip: str
    action: str
    kb: str
    target: str
    status: int
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: AuditRow) -> AuditEntry:
        return cls(
            id=row.id, at=_utc(row.at), request_id=row.request_id, actor=row.actor, role=row.role, ip=row.ip,
            action=row.action, kb=row.kb, target=row.target, status=row.status, detail=dict(row.detail or {}),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        return data


@dataclass(frozen=True)
class AuditQuery:
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    kb: str | None = None
    status: int | None = None

    def apply(self, query: Select[Any]) -> Select[Any]:
        if self.since is not None:
            query = query.where(AuditRow.at >= self.since)
        if self.until is not None:
            query = query.where(AuditRow.at < self.until)
        for column, value in (
            (AuditRow.actor, self.actor), (AuditRow.action, self.action), (AuditRow.kb, self.kb),
            (AuditRow.status, self.status),
        ):  # fmt: skip
            if value is not None:
                query = query.where(column == value)
        return query


class AuditLog:
    def __init__(self, engine: Engine, *, questions: Literal["text", "hash"] = "text") -> None:
        create_app_tables(engine, AuditRow)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._questions = questions

    def question(self, text: str) -> dict[str, str]:
        """A question as a row's detail holds it: as asked, or its SHA-256 (settings.security.audit_questions)."""
        if self._questions == "hash":
            return {"question_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
        return {"question": text}

    def record(
        self, action: Action | str, *, actor: Actor | None = None, kb: str = "", target: str = "", status: int = 200,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:  # fmt: skip
        who = actor or Actor()
        row = AuditRow(
            at=datetime.now(UTC), request_id=who.request_id[:64], actor=who.name[:128], role=who.role[:16],
            ip=who.ip[:64], action=str(action), kb=kb[:64], target=target[:256], status=status,
            detail=dict(detail or {}),
        )  # fmt: skip
        with self._sessions() as session, session.begin():
            session.add(row)
        return AuditEntry.of(row)

    def query(
        self, *, since: datetime | None = None, until: datetime | None = None, actor: str | None = None,
        action: str | None = None, kb: str | None = None, status: int | None = None, limit: int = 100,
        offset: int = 0, newest_first: bool = False,
    ) -> list[AuditEntry]:  # fmt: skip
        """Matching entries in the order they were recorded (or newest first), `limit` from `offset`."""
        where = AuditQuery(since=since, until=until, actor=actor, action=action, kb=kb, status=status)
        order = AuditRow.id.desc() if newest_first else AuditRow.id.asc()
        query = where.apply(select(AuditRow)).order_by(order).limit(max(0, min(limit, MAX_LIMIT))).offset(offset)
        with self._sessions() as session:
            return [AuditEntry.of(row) for row in session.scalars(query)]

    def count(self, where: AuditQuery) -> int:
        with self._sessions() as session:
            return int(session.scalar(where.apply(select(func.count(AuditRow.id)))) or 0)


async def record_async(audit: AuditLog, action: Action | str, **fields: Any) -> AuditEntry:
    """`audit.record` off the event loop; shielded, so that a client hanging up does not lose the row."""
    with anyio.CancelScope(shield=True):
        entry: AuditEntry = await to_thread.run_sync(partial(audit.record, action, **fields))
    return entry


async def audit_request(
    request: Request, action: Action | str, *, kb: str = "", target: str = "", status: int = 200,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:  # fmt: skip
    """Records an event of this request, attributed to its caller (request.state.principal, if known)."""
    audit: AuditLog = request.app.state.container.audit
    return await record_async(
        audit, action, actor=Actor.of_request(request), kb=kb, target=target, status=status, detail=detail
    )


def note_kb(request: Request, kb: str) -> None:
    """Names the knowledge base this request is about, before any check that may refuse it: the 403 row of
    a key that may not use the knowledge base then says which one was asked for."""
    request.state.audit_kb = kb
