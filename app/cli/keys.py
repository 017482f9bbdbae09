"""`kb keys create|list|revoke|rotate`: API keys, managed on the server's machine (local admin)."""

from __future__ import annotations

import dataclasses
import re
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from app.cli._common import JsonOpt, cli, emit, fail, load_settings

if TYPE_CHECKING:
    from app.auth.keys import KeyInfo, KeyStore

keys_cli = typer.Typer(help="API keys: create (shown once), list, revoke, rotate.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")

_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text.strip())
    if not match or int(match[1]) == 0:
        raise ValueError(f"{text!r} is not a duration like 90d, 12h or 30m")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _store() -> KeyStore:
    from app.container import Container

    return Container(load_settings()).keys


def _view(info: KeyInfo) -> dict[str, object]:
    data = dataclasses.asdict(info)
    data["active"] = info.active
    return data


def _line(info: KeyInfo) -> str:
    state = "active" if info.active else ("revoked" if info.revoked_at else "expired")
    expires = info.expires_at.strftime("%Y-%m-%d") if info.expires_at else "never"
    used = info.last_used_at.strftime("%Y-%m-%d %H:%M") if info.last_used_at else "never"
    return (
        f"{info.name:<20} {info.role:<9} {state:<8} groups={','.join(info.groups) or '-'} "
        f"kbs={','.join(info.kbs) or '-'} expires={expires} last_used={used} id={info.key_id}"
    )


@keys_cli.command("create")
def create(  # noqa: PLR0917 - typer maps parameters to options
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for (unique).")],
    role: Annotated[str, typer.Option("--role", help="admin, editor, employee or service.")],
    groups: Annotated[str, typer.Option("--groups", help="Comma-separated ACL groups.")] = "",
    kb: Annotated[str, typer.Option("--kb", help="Comma-separated knowledge bases, or * for all.")] = "default",
    expires: Annotated[Optional[str], typer.Option("--expires", help="Lifetime: 90d, 12h, 30m.")] = None,  # noqa: UP045
    allow_ip: Annotated[str, typer.Option("--allow-ip", help="Comma-separated CIDRs the key may come from.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Create a key. The secret is printed once; only its salted hash is stored."""
    from app.auth.keys import KeyError_, validate_key_fields
    from app.auth.roles import KEY_ROLES, Role

    if role not in {r.value for r in KEY_ROLES}:
        fail(f"--role must be one of {', '.join(r.value for r in KEY_ROLES)}", 2)
    try:
        lifetime = parse_duration(expires) if expires else None
        fields = validate_key_fields(name, split_list(groups), split_list(kb), split_list(allow_ip))
    except ValueError as exc:
        fail(str(exc), 2)
    try:
        new = _store().create(role=Role(role), expires_in=lifetime, **fields)
    except KeyError_ as exc:
        fail(str(exc.args[0]), 1)
    emit({**_view(new.info), "key": new.secret}, as_json, f"{new.secret}\n\n{_line(new.info)}\n(shown once)")


@keys_cli.command("list")
def list_keys(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List keys (never their secrets)."""
    infos = _store().list(include_revoked=all_)
    emit([_view(i) for i in infos], as_json, "\n".join(_line(i) for i in infos) or "no keys")


@keys_cli.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(help="Key name or id.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: it stops working at once."""
    from app.auth.keys import KeyError_

    try:
        info = _store().revoke(key)
    except KeyError_ as exc:
        fail(str(exc.args[0]))
    emit(_view(info), as_json, f"revoked {info.name}")


@keys_cli.command("rotate")
def rotate(
    key: Annotated[str, typer.Argument(help="Key name or id.")],
    as_json: JsonOpt = False,
) -> None:
    """Give a key a new secret (printed once); the old secret stops working at once."""
    from app.auth.keys import KeyError_

    try:
        new = _store().rotate(key)
    except KeyError_ as exc:
        fail(str(exc.args[0]))
    emit({**_view(new.info), "key": new.secret}, as_json, f"{new.secret}\n\n{_line(new.info)}\n(shown once)")
