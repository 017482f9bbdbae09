"""`kb keys create|list|revoke|rotate`: API keys, managed on the server's machine (local admin)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from app.cli._common import JsonOpt, cli, emit, fail, load_settings
from app.ops.durations import parse_duration

if TYPE_CHECKING:
    from app.access.admin import KeyManager
    from app.access.keys import KeyInfo

keys_cli = typer.Typer(help="API keys: create (shown once), list, revoke, rotate.", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")

__all__ = ["keys_cli", "parse_duration", "split_list"]


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _manager() -> KeyManager:
    from app.container import Container

    return Container(load_settings()).key_manager


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
    from app.audit.trail import Actor
    from app.errors import InvalidRequest, KBError

    try:
        lifetime = parse_duration(expires) if expires else None
    except ValueError as exc:
        fail(str(exc), 2)
    try:
        new = _manager().create(
            Actor.local_admin(), name=name, role=role, groups=split_list(groups), kbs=split_list(kb),
            cidrs=split_list(allow_ip), expires_in=lifetime,
        )  # fmt: skip
    except KBError as exc:
        fail(exc.message, 2 if isinstance(exc, InvalidRequest) else 1)
    emit({**_view(new.info), "key": new.secret}, as_json, f"{new.secret}\n\n{_line(new.info)}\n(shown once)")


@keys_cli.command("list")
def list_keys(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List keys (never their secrets)."""
    infos = _manager().list(include_revoked=all_)
    emit([_view(i) for i in infos], as_json, "\n".join(_line(i) for i in infos) or "no keys")


@keys_cli.command("revoke")
def revoke(
    key: Annotated[str, typer.Argument(help="Key name or id.")],
    as_json: JsonOpt = False,
) -> None:
    """Revoke a key: it stops working at once."""
    from app.audit.trail import Actor
    from app.errors import KBError

    try:
        info = _manager().revoke(Actor.local_admin(), key)
    except KBError as exc:
        fail(exc.message)
    emit(_view(info), as_json, f"revoked {info.name}")


@keys_cli.command("rotate")
def rotate(
    key: Annotated[str, typer.Argument(help="Key name or id.")],
    as_json: JsonOpt = False,
) -> None:
    """Give a key a new secret (printed once); the old secret stops working at once."""
    from app.audit.trail import Actor
    from app.errors import KBError

    try:
        new = _manager().rotate(Actor.local_admin(), key)
    except KBError as exc:
        fail(exc.message)
    emit({**_view(new.info), "key": new.secret}, as_json, f"{new.secret}\n\n{_line(new.info)}\n(shown once)")
