"""FastAPI dependencies that authenticate the caller and check one permission.

Every route that returns or changes content declares `Depends(allow(Permission.x))`; the principal is
also left on `request.state` for the audit log and the rate limiter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from app.access.keys import KeyStore
from app.access.principal import Principal, anonymous
from app.access.roles import Permission
from app.errors import Forbidden, Unauthorized
from app.ops.ratelimit import RateLimiter
from app.settings import Settings


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def authenticate(request: Request) -> Principal:
    """The caller behind the request's key; 401 for a missing or invalid key (unless anonymous is on)."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    settings: Settings = request.app.state.settings
    keys: KeyStore = request.app.state.container.keys
    presented = presented_key(request)
    if presented is None:
        if not settings.security.anonymous_access:
            raise Unauthorized()
        principal = anonymous(settings.security.anonymous_kbs)
    else:
        found = keys.verify(presented)
        if found is None:
            # A wrong key is refused even when anonymous access is on: the caller meant to be someone.
            raise Unauthorized("the API key is unknown, expired or revoked")
        principal = found
    request.state.principal = principal
    if not principal.allowed_from(client_ip(request)):
        raise Forbidden("this key may not be used from this address")
    return principal


def count_request(request: Request, principal: Principal) -> None:
    """Every authenticated request draws on its key's request budget, once (whatever the dependencies)."""
    if getattr(request.state, "rate_counted", False):
        return
    request.state.rate_counted = True
    limiter: RateLimiter = request.app.state.rate_limiter
    limiter.hit_request(principal, client_ip(request))


def allow(permission: Permission) -> Callable[[Request], Principal]:
    def dependency(request: Request) -> Principal:
        principal = authenticate(request)
        count_request(request, principal)
        principal.require(permission)
        return principal

    dependency.__name__ = f"allow_{permission.value}"
    return dependency


Asker = Annotated[Principal, Depends(allow(Permission.ask))]
Searcher = Annotated[Principal, Depends(allow(Permission.search))]
DocumentReader = Annotated[Principal, Depends(allow(Permission.read_documents))]
DocumentWriter = Annotated[Principal, Depends(allow(Permission.write_documents))]
KeyAdmin = Annotated[Principal, Depends(allow(Permission.manage_keys))]
KbAdmin = Annotated[Principal, Depends(allow(Permission.manage_kbs))]
Auditor = Annotated[Principal, Depends(allow(Permission.read_audit))]
FeedbackGiver = Annotated[Principal, Depends(allow(Permission.feedback))]
