"""Key administration with its audit trail: what `kb keys` and /admin/keys both do.

Every change is recorded (key_create, key_revoke, key_rotate) with the acting admin; errors are the
app's own (InvalidRequest 400, NotFound 404, Conflict 409), so that HTTP and the CLI say the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from app.access.keys import KeyError_, KeyInfo, KeyStore, NewKey, validate_key_fields
from app.access.roles import KEY_ROLES, Role
from app.audit.trail import Action, Actor, AuditLog
from app.errors import Conflict, InvalidRequest, NotFound


def key_role(role: str) -> Role:
    """A role a key may have (not anonymous); InvalidRequest otherwise."""
    if role not in {r.value for r in KEY_ROLES}:
        raise InvalidRequest(f"role must be one of {', '.join(r.value for r in KEY_ROLES)}")
    return Role(role)


def _described(info: KeyInfo) -> dict[str, object]:
    return {
        "key_id": info.key_id, "role": info.role, "groups": info.groups, "kbs": info.kbs, "cidrs": info.cidrs,
        "expires_at": info.expires_at.isoformat() if info.expires_at else None,
    }  # fmt: skip


class KeyManager:
    def __init__(self, keys: KeyStore, audit: AuditLog) -> None:
        self._keys = keys
        self._audit = audit

    def create(
        self, actor: Actor, *, name: str, role: str, groups: Sequence[str] = (), kbs: Sequence[str] = (),
        cidrs: Sequence[str] = (), expires_in: timedelta | None = None,
    ) -> NewKey:  # fmt: skip
        checked_role = key_role(role)
        try:
            fields = validate_key_fields(name, groups, kbs, cidrs)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        try:
            new = self._keys.create(role=checked_role, expires_in=expires_in, **fields)
        except KeyError_ as exc:
            raise Conflict(str(exc.args[0])) from None
        self._audit.record(Action.key_create, actor=actor, target=name, status=201, detail=_described(new.info))
        return new

    def list(self, *, include_revoked: bool = False) -> list[KeyInfo]:
        return self._keys.list(include_revoked=include_revoked)

    def revoke(self, actor: Actor, name_or_id: str) -> KeyInfo:
        info = self._find(name_or_id)
        revoked = self._keys.revoke(info.key_id)
        self._audit.record(Action.key_revoke, actor=actor, target=revoked.name, detail={"key_id": revoked.key_id})
        return revoked

    def rotate(self, actor: Actor, name_or_id: str) -> NewKey:
        info = self._find(name_or_id)
        if info.revoked_at is not None:
            raise Conflict(f"key {info.name!r} is revoked; create a new one")
        try:
            new = self._keys.rotate(info.key_id)
        except KeyError_ as exc:
            raise Conflict(str(exc.args[0])) from None
        self._audit.record(Action.key_rotate, actor=actor, target=new.info.name, detail={"key_id": new.info.key_id})
        return new

    def _find(self, name_or_id: str) -> KeyInfo:
        try:
            return self._keys.get(name_or_id)
        except KeyError_ as exc:
            raise NotFound(str(exc.args[0])) from None
