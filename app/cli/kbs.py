"""`kb kb create|list|update|delete`: knowledge bases, managed on the server's machine (local admin)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from app.audit import Actor
from app.cli._common import JsonOpt, cli, emit, fail, load_settings

if TYPE_CHECKING:
    from app.kbs import KbInfo, KnowledgeBases

kbs_cli = typer.Typer(
    help="Knowledge bases: create, list (with document counts), update, delete.", no_args_is_help=True
)
cli.add_typer(kbs_cli, name="kb")

NameArg = Annotated[str, typer.Argument(help="Knowledge base name (1-64 letters, digits or underscores).")]
GroupsOpt = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at runtime
    typer.Option(
        "--default-groups",
        help="Comma-separated groups that documents uploaded without groups get. Not given: the configured "
        "security.default_groups on create, unchanged on update; '' for none (new documents readable by admins only).",
    ),
]
DescriptionOpt = Annotated[Optional[str], typer.Option("--description", help="What the knowledge base holds.")]  # noqa: UP045


def _kbs() -> KnowledgeBases:
    from app.container import Container

    return Container(load_settings()).kbs


def _groups(text: str | None) -> list[str] | None:
    return None if text is None else [g.strip() for g in text.split(",") if g.strip()]


def _line(info: KbInfo) -> str:
    groups = ",".join(info.default_groups) or "- (admins only)"
    return f"{info.name:<24} {info.documents:>6} docs  default groups {groups}  {info.description[:60]}"


@kbs_cli.command("create")
def create(
    name: NameArg, description: DescriptionOpt = None, default_groups: GroupsOpt = None, as_json: JsonOpt = False
) -> None:
    """Create a knowledge base."""
    from app.errors import KBError

    try:
        info = _kbs().create(
            name, actor=Actor.local_admin(), description=description or "", default_groups=_groups(default_groups)
        )
    except KBError as exc:
        fail(exc.message, 2 if exc.status_code == 400 else 1)
    emit(dataclasses.asdict(info), as_json, f"created {_line(info)}")


@kbs_cli.command("list")
def list_kbs(as_json: JsonOpt = False) -> None:
    """Knowledge bases with their document counts and default groups."""
    infos = _kbs().list()
    emit([dataclasses.asdict(i) for i in infos], as_json, "\n".join(_line(i) for i in infos) or "no knowledge bases")


@kbs_cli.command("update")
def update(
    name: NameArg, description: DescriptionOpt = None, default_groups: GroupsOpt = None, as_json: JsonOpt = False
) -> None:
    """Change a knowledge base's description or default groups (its documents keep their own groups)."""
    from app.errors import KBError

    if description is None and default_groups is None:
        fail("nothing to change: give --description and/or --default-groups", 2)
    try:
        info = _kbs().update(
            name, actor=Actor.local_admin(), description=description, default_groups=_groups(default_groups)
        )
    except KBError as exc:
        fail(exc.message, 2 if exc.status_code == 400 else 1)
    emit(dataclasses.asdict(info), as_json, f"updated {_line(info)}")


@kbs_cli.command("delete")
def delete(
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a knowledge base: its collection (every chunk) and its documents, at once and for good."""
    from app.errors import KBError

    kbs = _kbs()
    try:
        info = kbs.get(name)
        if not yes:
            typer.confirm(f"delete knowledge base {name} and its {info.documents} documents?", abort=True)
        gone = kbs.delete(name, actor=Actor.local_admin())
    except KBError as exc:
        fail(exc.message)
    emit(dataclasses.asdict(gone), as_json, f"deleted {gone.name} ({gone.documents} documents)")
