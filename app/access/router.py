"""/admin/keys: create (the secret is in the answer once), list, revoke and rotate API keys."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.access.deps import KeyAdmin
from app.access.keys import KeyInfo, NewKey, validate_key_fields
from app.audit.trail import Actor
from app.deps import ContainerDep
from app.ops.durations import parse_duration

router = APIRouter(prefix="/admin/keys", tags=["admin"])


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Who or what the key is for; unique")
    role: Literal["admin", "editor", "employee", "service"]
    groups: list[str] = Field(default_factory=list, max_length=100)
    kbs: list[str] = Field(default_factory=lambda: ["default"], max_length=100, description='Or ["*"] for all')
    expires_in_days: int | None = Field(None, ge=1, le=36500)
    expires: str | None = Field(None, description="Lifetime like 90d, 12h or 30m (instead of expires_in_days)")
    allow_ips: list[str] = Field(default_factory=list, max_length=100, description="CIDRs the key may come from")

    @model_validator(mode="after")
    def _check(self) -> CreateKeyRequest:
        validate_key_fields(self.name, self.groups, self.kbs, self.allow_ips)
        if self.expires is not None and self.expires_in_days is not None:
            raise ValueError("give expires or expires_in_days, not both")
        self.lifetime()
        return self

    def lifetime(self) -> timedelta | None:
        if self.expires is not None:
            return parse_duration(self.expires)
        return timedelta(days=self.expires_in_days) if self.expires_in_days is not None else None


class KeyView(BaseModel):
    """A key as the API shows it: never its secret, hash or salt."""

    key_id: str
    name: str
    role: str
    groups: list[str]
    kbs: list[str]
    allow_ips: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    active: bool

    @classmethod
    def of(cls, info: KeyInfo) -> KeyView:
        return cls(
            key_id=info.key_id, name=info.name, role=info.role, groups=info.groups, kbs=info.kbs,
            allow_ips=info.cidrs, created_at=info.created_at, expires_at=info.expires_at,
            last_used_at=info.last_used_at, revoked_at=info.revoked_at, active=info.active,
        )  # fmt: skip


class NewKeyView(KeyView):
    key: str = Field(description="The secret: shown in this answer only, store it now")

    @classmethod
    def of_new(cls, new: NewKey) -> NewKeyView:
        return cls(**KeyView.of(new.info).model_dump(), key=new.secret)


@router.post("", status_code=201, response_model=NewKeyView)
def create_key(body: CreateKeyRequest, request: Request, container: ContainerDep, _admin: KeyAdmin) -> NewKeyView:
    new = container.key_manager.create(
        Actor.of_request(request), name=body.name, role=body.role, groups=body.groups, kbs=body.kbs,
        cidrs=body.allow_ips, expires_in=body.lifetime(),
    )  # fmt: skip
    return NewKeyView.of_new(new)


@router.get("", response_model=list[KeyView])
def list_keys(container: ContainerDep, _admin: KeyAdmin, include_revoked: bool = False) -> list[KeyView]:
    return [KeyView.of(info) for info in container.key_manager.list(include_revoked=include_revoked)]


@router.post("/{name}/revoke", response_model=KeyView)
def revoke_key(name: str, request: Request, container: ContainerDep, _admin: KeyAdmin) -> KeyView:
    return KeyView.of(container.key_manager.revoke(Actor.of_request(request), name))


@router.post("/{name}/rotate", response_model=NewKeyView)
def rotate_key(name: str, request: Request, container: ContainerDep, _admin: KeyAdmin) -> NewKeyView:
    return NewKeyView.of_new(container.key_manager.rotate(Actor.of_request(request), name))
