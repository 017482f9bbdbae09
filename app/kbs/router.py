"""/admin/kbs: knowledge bases for admins (list, create, update, delete); the logic is in app/kbs/service.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, status
from pydantic import BaseModel, Field

from app.access.deps import KbAdmin
from app.audit.trail import Actor, note_kb
from app.deps import ContainerDep
from app.kbs.service import MAX_DESCRIPTION, KbDeleted, KbInfo
from core.names import GROUP_NAME_PATTERN, KB_NAME_PATTERN

router = APIRouter(prefix="/admin/kbs", tags=["admin"])

Group = Annotated[str, Field(pattern=GROUP_NAME_PATTERN, description="1-128 letters, digits or _ . : -")]
KbName = Annotated[str, Path(pattern=KB_NAME_PATTERN, description="1-64 letters, digits or underscores")]


class KnowledgeBaseOut(BaseModel):
    name: str
    description: str
    default_groups: list[str]
    documents: int = Field(description="documents in it, deleted ones not counted")
    created_at: datetime

    @classmethod
    def of(cls, info: KbInfo) -> KnowledgeBaseOut:
        return cls(
            name=info.name, description=info.description, default_groups=info.default_groups,
            documents=info.documents, created_at=info.created_at,
        )  # fmt: skip


class KnowledgeBaseCreate(BaseModel):
    name: str = Field(pattern=KB_NAME_PATTERN, description="1-64 letters, digits or underscores")
    description: str = Field("", max_length=MAX_DESCRIPTION)
    default_groups: list[Group] | None = Field(
        None,
        max_length=256,
        description="groups of documents uploaded without any; not given: the server's configured default. "
        "An empty list makes new documents readable by admins only.",
    )


class KnowledgeBaseUpdate(BaseModel):
    description: str | None = Field(None, max_length=MAX_DESCRIPTION)
    default_groups: list[Group] | None = Field(None, max_length=256, description="replaces the default groups")


class KnowledgeBaseDeleted(BaseModel):
    name: str
    documents: int = Field(description="documents forgotten with it")

    @classmethod
    def of(cls, gone: KbDeleted) -> KnowledgeBaseDeleted:
        return cls(name=gone.name, documents=gone.documents)


@router.get("", response_model=list[KnowledgeBaseOut])
def list_kbs(container: ContainerDep, caller: KbAdmin) -> list[KnowledgeBaseOut]:
    return [KnowledgeBaseOut.of(kb) for kb in container.kbs.list() if caller.may_use(kb.name)]


@router.post("", response_model=KnowledgeBaseOut, status_code=status.HTTP_201_CREATED)
def create_kb(
    request: Request, body: KnowledgeBaseCreate, container: ContainerDep, caller: KbAdmin
) -> KnowledgeBaseOut:
    note_kb(request, body.name)
    caller.require_kb(body.name)
    info = container.kbs.create(
        body.name, actor=Actor.of_request(request), description=body.description, default_groups=body.default_groups
    )
    return KnowledgeBaseOut.of(info)


@router.patch("/{name}", response_model=KnowledgeBaseOut)
def update_kb(
    request: Request, name: KbName, body: KnowledgeBaseUpdate, container: ContainerDep, caller: KbAdmin
) -> KnowledgeBaseOut:
    note_kb(request, name)
    caller.require_kb(name)
    info = container.kbs.update(
        name, actor=Actor.of_request(request), description=body.description, default_groups=body.default_groups
    )
    return KnowledgeBaseOut.of(info)


@router.delete("/{name}", response_model=KnowledgeBaseDeleted)
def delete_kb(request: Request, name: KbName, container: ContainerDep, caller: KbAdmin) -> KnowledgeBaseDeleted:
    note_kb(request, name)
    caller.require_kb(name)
    return KnowledgeBaseDeleted.of(container.kbs.delete(name, actor=Actor.of_request(request)))
