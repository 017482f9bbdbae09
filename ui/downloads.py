"""Downloads of original documents through the UI server, with the signed-in user's key.

A browser link cannot carry the `Authorization` header, and the key must never be in a URL. So a source
card links to `files?t=TICKET`: the ticket is a random, short-lived name for (this session's key, kb,
document), kept in this process's memory only. The route looks it up and fetches the file from the API's
permission-checked `GET /documents/{doc_id}/file` with that key, so the API decides, as for every call.
The ticket is in the query string, which the access log does not record (it logs paths only), and it
opens that one document for that key until it expires or its session signs out.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from ui.client import ApiError, KbClient

# Not content-length: the body is passed on decoded, which may change its size.
_PASSED_HEADERS = ("content-type", "content-disposition", "etag", "last-modified")


@dataclass(frozen=True)
class Grant:
    key: str
    kb: str
    doc_id: str
    expires: float


class Tickets:
    """Tickets for downloads: issued when a card is shown, valid for `ttl_s`, at most `capacity` at once."""

    def __init__(self, *, ttl_s: float = 1800.0, capacity: int = 20_000) -> None:
        self._ttl = ttl_s
        self._capacity = capacity
        self._grants: OrderedDict[str, Grant] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self, key: str, kb: str, doc_id: str) -> str:
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            self._grants[ticket] = Grant(key=key, kb=kb, doc_id=doc_id, expires=time.monotonic() + self._ttl)
            while len(self._grants) > self._capacity:
                self._grants.popitem(last=False)
        return ticket

    def redeem(self, ticket: str) -> Grant | None:
        with self._lock:
            grant = self._grants.get(ticket)
            if grant is None:
                return None
            if grant.expires < time.monotonic():
                del self._grants[ticket]
                return None
            return grant

    def forget_key(self, key: str) -> None:
        """Signing out ends the session's downloads too."""
        with self._lock:
            for ticket in [t for t, g in self._grants.items() if g.key == key]:
                del self._grants[ticket]

    def __len__(self) -> int:
        return len(self._grants)


def _attachment(doc_id: str) -> str:
    name = doc_id.rsplit("/", 1)[-1] or "document"
    return f"attachment; filename*=UTF-8''{quote(name, safe='')}"


def download_route(
    api_url: str, tickets: Tickets, *, timeout_s: float = 120.0
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint behind the cards' download links (mounted at `<ui path>/files`)."""

    async def download(request: Request) -> Response:
        grant = tickets.redeem(request.query_params.get("t", ""))
        if grant is None:
            return PlainTextResponse("This download link has expired: ask again or sign in again.", status_code=404)
        opened = KbClient(api_url, grant.key, timeout_s=timeout_s).download(grant.doc_id, kb=grant.kb)
        try:
            upstream = await opened.__aenter__()
        except ApiError as exc:
            return PlainTextResponse(exc.message, status_code=exc.status or 502)
        headers = {name: upstream.headers[name] for name in _PASSED_HEADERS if name in upstream.headers}
        if not headers.get("content-disposition", "").startswith("attachment"):
            headers["content-disposition"] = _attachment(grant.doc_id)
        headers["cache-control"] = "no-store"
        headers["x-content-type-options"] = "nosniff"

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.aiter_bytes():
                    yield chunk
            finally:
                await opened.__aexit__(None, None, None)

        return StreamingResponse(body(), status_code=200, headers=headers)

    return download
