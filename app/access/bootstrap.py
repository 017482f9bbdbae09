"""First start on an empty KB_HOME: the default knowledge base and the first admin key."""

from __future__ import annotations

from app.access.keys import KeyStore, NewKey
from app.access.principal import ALL_KBS
from app.access.roles import Role
from app.settings import Settings
from ingest.registry import Registry

DEFAULT_KB = "default"


def ensure_default_kb(registry: Registry, settings: Settings) -> None:
    registry.create_knowledge_base(
        DEFAULT_KB, description="Company documents", default_groups=list(settings.security.default_groups)
    )


def first_admin_key(keys: KeyStore, settings: Settings) -> NewKey | None:
    """An admin key when the database holds no key at all (revoked ones count: a database whose keys
    were all revoked does not quietly grow a new admin)."""
    if not settings.security.bootstrap_admin_key or keys.count() > 0:
        return None
    return keys.create(name="admin", role=Role.admin, kbs=[ALL_KBS])
