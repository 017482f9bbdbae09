"""The authenticated caller: the one object every access decision is made from."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from app.access.roles import PERMISSIONS, Permission, Role
from app.errors import Forbidden
from core.types import Access

ALL_KBS = "*"


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    role: Role
    groups: tuple[str, ...] = ()
    # Knowledge bases the key may use; ALL_KBS for every one (admins).
    kbs: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()

    @property
    def access(self) -> Access:
        if self.role is Role.admin:
            return Access.everything()
        if self.role is Role.anonymous:
            return Access.public_only()
        return Access.groups(self.groups)

    def may(self, permission: Permission) -> bool:
        return permission in PERMISSIONS[self.role]

    def require(self, permission: Permission) -> None:
        if not self.may(permission):
            raise Forbidden(f"the {self.role} role may not {permission.value.replace('_', ' ')}")

    def may_use(self, kb: str) -> bool:
        return ALL_KBS in self.kbs or kb in self.kbs

    def require_kb(self, kb: str) -> None:
        # The same answer whether the knowledge base exists or not, so that probing names reveals nothing.
        if not self.may_use(kb):
            raise Forbidden(f"this key may not use knowledge base {kb!r}")

    def allowed_from(self, ip: str | None) -> bool:
        if not self.cidrs:
            return True
        if ip is None:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(c, strict=False) for c in self.cidrs)


def anonymous(kbs: Sequence[str]) -> Principal:
    return Principal(key_id="", name="anonymous", role=Role.anonymous, kbs=tuple(kbs))


def local_admin() -> Principal:
    """Trusted local code (the CLI on the server's own machine, with its files)."""
    return Principal(key_id="", name="local-admin", role=Role.admin, kbs=(ALL_KBS,))
