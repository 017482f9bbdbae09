"""`kb audit`: read the audit log on the server's machine."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from app.cli._common import JsonOpt, cli, emit, fail, load_settings
from app.ops.durations import parse_moment


@cli.command("audit")
def audit(  # noqa: PLR0917 - typer maps parameters to options
    since: Annotated[str, typer.Option("--since", help="A duration ago (1h, 7d) or a time (2026-11-28T00:00, UTC).")],
    until: Annotated[Optional[str], typer.Option("--until", help="Same forms as --since.")] = None,  # noqa: UP045
    actor: Annotated[Optional[str], typer.Option("--actor", help="Key name, anonymous or local-admin.")] = None,  # noqa: UP045
    action: Annotated[Optional[str], typer.Option("--action", help="ask, search, key_create, forbidden, ...")] = None,  # noqa: UP045
    kb: Annotated[Optional[str], typer.Option("--kb", help="Knowledge base name.")] = None,  # noqa: UP045
    status: Annotated[Optional[int], typer.Option("--status", help="HTTP status, e.g. 403.")] = None,  # noqa: UP045
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 1000,
    as_json: JsonOpt = False,
) -> None:
    """Audit entries since a moment, oldest first."""
    from app.container import Container

    try:
        start = parse_moment(since)
        end = parse_moment(until) if until else None
    except ValueError as exc:
        fail(str(exc), 2)
    entries = Container(load_settings()).audit.query(
        since=start, until=end, actor=actor, action=action, kb=kb, status=status, limit=limit
    )
    lines = [
        f"{e.at:%Y-%m-%d %H:%M:%S} {e.status} {e.action:<13} {e.actor or '-':<16} kb={e.kb or '-'} "
        f"target={e.target or '-'} ip={e.ip or '-'} request={e.request_id or '-'}"
        for e in entries
    ]
    emit([e.as_dict() for e in entries], as_json, "\n".join(lines) or "no entries")
