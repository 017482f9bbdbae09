"""API keys in the SQL database: salted hashes, roles, groups, knowledge-base grants, expiry, last use.

A key reads `kb_<key id>_<secret>`. The key id finds the row; the secret is checked against
sha256(salt + secret) in constant time. A fast hash is enough here (unlike passwords): the secret is
32 random bytes, so there is nothing to guess; the salt keeps equal hashes from revealing equal keys.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, DateTime, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from app.access.principal import ALL_KBS, Principal
from app.access.roles import Role
from app.db.base import AppBase, create_app_tables
from core.names import KB_NAME

_PREFIX = "kb_"
# Writing last_used on every request would make each read a write; once a minute is enough to audit.
_TOUCH_EVERY = timedelta(seconds=60)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes even for timezone-aware columns.
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class ApiKeyRow(AppBase):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    kbs: Mapped[list[str]] = mapped_column(JSON, default=list)
    cidrs: Mapped[list[str]] = mapped_column(JSON, default=list)
    salt: Mapped[str] = mapped_column(String(64))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a key: everything but the secret and its hash."""

    key_id: str
    name: str
    role: str
    groups: list[str]
    kbs: list[str]
    cidrs: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > _now())

    @classmethod
    def of(cls, row: ApiKeyRow) -> KeyInfo:
        return cls(
            key_id=row.key_id, name=row.name, role=row.role, groups=list(row.groups), kbs=list(row.kbs),
            cidrs=list(row.cidrs), created_at=_utc(row.created_at) or _now(), expires_at=_utc(row.expires_at),
            last_used_at=_utc(row.last_used_at), revoked_at=_utc(row.revoked_at),
        )  # fmt: skip


@dataclass(frozen=True)
class NewKey:
    info: KeyInfo
    secret: str  # shown once, never stored


class KeyError_(LookupError):
    """No such key (by name or id), or a name already taken."""


def _hash(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def _split(presented: str) -> tuple[str, str] | None:
    if not presented.startswith(_PREFIX):
        return None
    key_id, sep, secret = presented[len(_PREFIX) :].partition("_")
    if not sep or not key_id or not secret or len(key_id) > 32 or len(secret) > 128:
        return None
    return key_id, secret


def key_id_of(presented: str) -> str | None:
    """The key id a presented key names (not secret: it is shown in `kb keys list`), if well formed."""
    parts = _split(presented)
    return parts[0] if parts else None


class KeyStore:
    def __init__(self, engine: Engine) -> None:
        create_app_tables(engine)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    def create(
        self, *, name: str, role: Role, groups: Sequence[str] = (), kbs: Sequence[str] = (),
        expires_in: timedelta | None = None, cidrs: Sequence[str] = (),
    ) -> NewKey:  # fmt: skip
        key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_hex(16)
        row = ApiKeyRow(
            key_id=key_id, name=name, role=role.value, groups=list(groups), kbs=list(kbs), cidrs=list(cidrs),
            salt=salt, secret_hash=_hash(salt, secret), created_at=_now(),
            expires_at=_now() + expires_in if expires_in else None,
        )  # fmt: skip
        with self._sessions() as session, session.begin():
            if session.scalar(select(ApiKeyRow.key_id).where(ApiKeyRow.name == name)) is not None:
                raise KeyError_(f"a key named {name!r} exists already")
            session.add(row)
        return NewKey(KeyInfo.of(row), f"{_PREFIX}{key_id}_{secret}")

    def list(self, *, include_revoked: bool = False) -> list[KeyInfo]:
        with self._sessions() as session:
            query = select(ApiKeyRow).order_by(ApiKeyRow.created_at)
            if not include_revoked:
                query = query.where(ApiKeyRow.revoked_at.is_(None))
            return [KeyInfo.of(r) for r in session.scalars(query)]

    def count(self) -> int:
        with self._sessions() as session:
            return len(session.scalars(select(ApiKeyRow.key_id)).all())

    def get(self, name_or_id: str) -> KeyInfo:
        with self._sessions() as session:
            return KeyInfo.of(self._find(session, name_or_id))

    def revoke(self, name_or_id: str) -> KeyInfo:
        with self._sessions() as session, session.begin():
            row = self._find(session, name_or_id)
            if row.revoked_at is None:
                row.revoked_at = _now()
            return KeyInfo.of(row)

    def rotate(self, name_or_id: str) -> NewKey:
        """A new secret for the same name, role, groups and grants; the old secret stops working now."""
        with self._sessions() as session, session.begin():
            row = self._find(session, name_or_id)
            if row.revoked_at is not None:
                raise KeyError_(f"key {row.name!r} is revoked")
            secret, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
            row.salt, row.secret_hash = salt, _hash(salt, secret)
            return NewKey(KeyInfo.of(row), f"{_PREFIX}{row.key_id}_{secret}")

    def verify(self, presented: str) -> Principal | None:
        """The principal of a valid key; None for a malformed, unknown, wrong, revoked or expired one."""
        parts = _split(presented)
        if parts is None:
            return None
        key_id, secret = parts
        with self._sessions() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or not hmac.compare_digest(row.secret_hash, _hash(row.salt, secret)):
                return None
            info = KeyInfo.of(row)
            if not info.active:
                return None
            if info.last_used_at is None or _now() - info.last_used_at > _TOUCH_EVERY:
                row.last_used_at = _now()
                session.commit()
        return Principal(
            key_id=info.key_id, name=info.name, role=Role(info.role), groups=tuple(info.groups),
            kbs=tuple(info.kbs), cidrs=tuple(info.cidrs),
        )  # fmt: skip

    @staticmethod
    def _find(session: Session, name_or_id: str) -> ApiKeyRow:
        row = session.get(ApiKeyRow, name_or_id) or session.scalar(
            select(ApiKeyRow).where(ApiKeyRow.name == name_or_id)
        )
        if row is None:
            raise KeyError_(f"no key named {name_or_id!r}")
        return row


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


def validate_key_fields(name: str, groups: Sequence[str], kbs: Sequence[str], cidrs: Sequence[str]) -> dict[str, Any]:
    """The checked fields of a new key (the same rules for the CLI and /admin/keys); ValueError says why."""
    if not _NAME.match(name):
        raise ValueError("the name must be 1-128 letters, digits or _ . @ -, starting with a letter or digit")
    for group in groups:
        if not _TOKEN.match(group):
            raise ValueError(f"group {group!r} must be 1-128 letters, digits or _ . : -")
    if not kbs:
        raise ValueError("a key needs at least one knowledge base (or * for all)")
    for kb in kbs:
        if kb != ALL_KBS and not KB_NAME.match(kb):
            raise ValueError(f"knowledge base {kb!r} must be 1-64 letters, digits or underscores, or *")
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{cidr!r} is not an IP network (CIDR)") from None
    return {"name": name, "groups": list(groups), "kbs": list(kbs), "cidrs": list(cidrs)}
