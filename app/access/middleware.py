"""Authentication before anything else reads the request.

Route dependencies alone would let FastAPI parse the body first, so an unauthenticated caller would
learn about the API from 422s (and costs the server a parse). This ASGI middleware authenticates every
request except the public paths, answers 401/403 in the one error shape, and leaves the principal on
the request state for the route's own permission check.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.access.deps import authenticate
from app.errors import KBError, error_response


class AuthMiddleware:
    def __init__(self, app: ASGIApp, *, is_public: Callable[[str], bool]) -> None:
        self.app = app
        self._is_public = is_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            authenticate(request)
        except KBError as exc:
            await error_response(request, exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def public_paths(*, ui_path: str | None, docs_public: bool, metrics_public: bool = False) -> Callable[[str], bool]:
    """Liveness, readiness and the UI's own routes (the UI signs users in and calls the API with their
    key); the API docs and the metrics only when the settings make them public."""
    exact = {"/healthz", "/readyz"}
    if docs_public:
        exact |= {"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
    if metrics_public:
        exact.add("/metrics")

    def is_public(path: str) -> bool:
        return path in exact or (ui_path is not None and (path == ui_path or path.startswith(f"{ui_path}/")))

    return is_public
