"""Per request: an id, one JSON access-log line, and an audit row for every 401, 403 and 429.

A pure ASGI middleware (not BaseHTTPMiddleware), so that streamed responses (SSE) pass through as they
are sent; the log line and the audit row are written when the response has ended.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access.deps import presented_key
from app.access.keys import key_id_of
from app.access.principal import Principal
from app.audit.trail import REFUSALS, Actor, AuditLog, record_async

log = logging.getLogger("kb.access")

# A client's id is kept only when it is a short plain token: anything else (spaces, newlines, quotes,
# a kilobyte of text) would end up verbatim in log lines and headers.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def accepted_request_id(presented: str | None) -> str:
    """The client's X-Request-Id when it is a short token; otherwise a fresh one."""
    if presented is not None and _REQUEST_ID.fullmatch(presented):
        return presented
    return uuid.uuid4().hex


class RequestContext:
    def __init__(self, app: ASGIApp, *, audit: Callable[[], AuditLog]) -> None:
        self.app = app
        # Asked for on the first refusal, so that building the app opens no database.
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accepted_request_id(Headers(scope=scope).get("x-request-id"))
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = rid
        started = time.perf_counter()
        # Stays 500 when the app raises before responding: the error handler outside answers 500.
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)["x-request-id"] = rid
                if status in REFUSALS:
                    # Recorded before the client hears the answer, so that whoever reads the audit log
                    # after a refusal finds it there.
                    await self._record_refusal(scope, state, status, state.get("principal"))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            principal: Principal | None = state.get("principal")
            log.info(
                "request",
                extra={
                    "method": scope["method"], "path": scope["path"], "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 1), "request_id": rid,
                    "actor": principal.name if principal else "",
                },
            )  # fmt: skip

    async def _record_refusal(
        self, scope: Scope, state: dict[str, Any], status: int, principal: Principal | None
    ) -> None:
        client = scope.get("client")
        actor = Actor.of_principal(principal, ip=client[0] if client else "", request_id=state["request_id"])
        detail: dict[str, Any] = {"method": scope["method"], "path": scope["path"]}
        presented = presented_key(Request(scope))
        if principal is None and presented and (key_id := key_id_of(presented)):
            # Which key was refused (unknown, revoked, expired): the id only, never the secret.
            detail["key_id"] = key_id
        try:
            await record_async(
                self._audit(), REFUSALS[status], actor=actor, kb=str(state.get("audit_kb", "")), status=status,
                detail=detail,
            )  # fmt: skip
        except Exception:
            # The response has gone out already; the failure must at least be visible.
            log.exception("could not record a refused request in the audit log", extra={"request_id": actor.request_id})
