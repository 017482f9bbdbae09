"""API keys in a real SQLite database: hashed at rest, shown once, revocable, rotatable, expiring."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.access.keys import KeyError_, KeyStore, validate_key_fields
from app.access.principal import ALL_KBS, anonymous, local_admin
from app.access.roles import PERMISSIONS, Permission, Role
from app.cli.keys import parse_duration
from app.errors import Forbidden
from core.types import Access


@pytest.fixture
def keys(tmp_path: Path) -> KeyStore:
    return KeyStore(create_engine(f"sqlite:///{tmp_path / 'kb.db'}"))


def test_a_key_verifies_to_its_principal_and_only_its_hash_is_stored(keys: KeyStore, tmp_path: Path) -> None:
    new = keys.create(name="ana", role=Role.employee, groups=["hr"], kbs=["default"])
    principal = keys.verify(new.secret)
    assert principal is not None and principal.name == "ana" and principal.role is Role.employee
    assert principal.access == Access.groups(["hr"]) and principal.may_use("default") and not principal.may_use("x")
    with create_engine(f"sqlite:///{tmp_path / 'kb.db'}").connect() as conn:
        stored = " ".join(str(v) for row in conn.execute(text("select * from api_keys")) for v in row)
    assert new.secret.split("_", 2)[2] not in stored
    assert keys.list()[0].last_used_at is not None


@pytest.mark.parametrize("presented", ["", "kb_", "kb_abc", "nonsense", "kb_000000000000_x", "Bearer x"])
def test_malformed_and_unknown_keys_are_refused(keys: KeyStore, presented: str) -> None:
    keys.create(name="ana", role=Role.employee, kbs=["default"])
    assert keys.verify(presented) is None


def test_a_wrong_secret_for_a_real_key_id_is_refused(keys: KeyStore) -> None:
    new = keys.create(name="ana", role=Role.employee, kbs=["default"])
    assert keys.verify(new.secret[:-1] + ("A" if new.secret[-1] != "A" else "B")) is None


def test_revoked_rotated_and_expired_keys_stop_working(keys: KeyStore) -> None:
    a = keys.create(name="a", role=Role.service, kbs=["default"])
    keys.revoke("a")
    assert keys.verify(a.secret) is None and keys.list() == [] and len(keys.list(include_revoked=True)) == 1
    b = keys.create(name="b", role=Role.editor, groups=["eng"], kbs=["default"])
    rotated = keys.rotate(b.info.key_id)
    assert keys.verify(b.secret) is None
    principal = keys.verify(rotated.secret)
    assert principal is not None and principal.groups == ("eng",) and principal.role is Role.editor
    c = keys.create(name="c", role=Role.admin, kbs=[ALL_KBS], expires_in=timedelta(seconds=-1))
    assert keys.verify(c.secret) is None and not keys.get("c").active
    with pytest.raises(KeyError_):
        keys.create(name="b", role=Role.employee, kbs=["default"])
    with pytest.raises(KeyError_):
        keys.revoke("nobody")


def test_roles_carry_exactly_their_permissions() -> None:
    assert PERMISSIONS[Role.admin] == frozenset(Permission)
    assert Permission.write_documents in PERMISSIONS[Role.editor]
    assert Permission.manage_keys not in PERMISSIONS[Role.editor]
    assert PERMISSIONS[Role.service] == {Permission.ask, Permission.search}
    assert Permission.read_documents in PERMISSIONS[Role.employee]
    assert Permission.write_documents not in PERMISSIONS[Role.employee]


def test_principals_fail_closed() -> None:
    anon = anonymous(["default"])
    assert anon.access == Access.public_only() and not anon.may(Permission.read_documents)
    with pytest.raises(Forbidden):
        anon.require_kb("hr")
    assert local_admin().access.unrestricted and local_admin().may_use("anything")


def test_ip_allow_lists() -> None:
    from app.access.principal import Principal

    p = Principal(key_id="k", name="n", role=Role.service, kbs=("default",), cidrs=("10.0.0.0/8",))
    assert p.allowed_from("10.1.2.3") and not p.allowed_from("127.0.0.1") and not p.allowed_from(None)
    assert not p.allowed_from("testclient")


def test_key_fields_and_durations_are_validated() -> None:
    assert validate_key_fields("svc-1", ["hr"], ["default", "*"], ["10.0.0.0/8"])["kbs"] == ["default", "*"]
    for bad in (("", [], ["default"], []), ("a", ["h r"], ["default"], []), ("a", [], [], []),
                ("a", [], ["bad-name"], []), ("a", [], ["default"], ["nonsense"])):  # fmt: skip
        with pytest.raises(ValueError):
            validate_key_fields(*bad)
    assert parse_duration("90d") == timedelta(days=90) and parse_duration("12h") == timedelta(hours=12)
    for bad in ("0d", "90", "d", "1y", "-1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
