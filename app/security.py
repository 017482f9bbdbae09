"""Who is calling, and which ACL groups that caller may read.

Groups come from the caller's credentials and the settings, never from the request body, and reach
Milvus only as typed filter values (retrieval.store.build_filter)."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Depends, Request

from app.settings import SecuritySettings


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


def groups_for(security: SecuritySettings, api_key: str | None) -> list[str]:
    if api_key is not None:
        groups = security.key_groups.get(key_digest(api_key))
        if groups is not None:
            return list(groups)
    return list(security.anonymous_groups)


def caller_groups(request: Request) -> list[str]:
    settings = request.app.state.container.settings
    return groups_for(settings.security, presented_key(request))


CallerGroups = Annotated[list[str], Depends(caller_groups)]
