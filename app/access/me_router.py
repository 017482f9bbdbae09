"""GET /me: who the key belongs to and what it may use (the UI decides what to show from this)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.access.deps import authenticate
from app.access.principal import ALL_KBS
from app.access.roles import PERMISSIONS
from app.deps import ContainerDep

router = APIRouter(tags=["me"])


class KnowledgeBaseInfo(BaseModel):
    name: str
    description: str


class Me(BaseModel):
    name: str
    role: str
    groups: list[str]
    permissions: list[str]
    knowledge_bases: list[KnowledgeBaseInfo]


@router.get("/me", response_model=Me)
async def me(request: Request, container: ContainerDep) -> Me:
    caller = authenticate(request)
    existing = container.registry.knowledge_bases()
    usable = [kb for kb in existing if ALL_KBS in caller.kbs or kb.name in caller.kbs]
    return Me(
        name=caller.name,
        role=caller.role.value,
        groups=list(caller.groups),
        permissions=sorted(p.value for p in PERMISSIONS[caller.role]),
        knowledge_bases=[KnowledgeBaseInfo(name=kb.name, description=kb.description) for kb in usable],
    )
