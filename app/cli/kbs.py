"""`kb kb create|list|update|delete`: knowledge bases, managed on the server's machine (local admin)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from app.audit.trail import Actor
from app.cli._common import JsonOpt, cli, emit, fail, load_settings

if TYPE_CHECKING:
    from app.kbs.service import KbInfo, KnowledgeBases

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


@cli.command("reindex")
def reindex(
    kb: Annotated[str, typer.Option("--kb", help="Knowledge base to re-embed.")],
    backend: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at runtime
        typer.Option("--backend", help="Embedding backend to re-embed with (default: KB_EMBEDDING__BACKEND)."),
    ] = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--model", help="Embedding model to re-embed with (default: KB_EMBEDDING__MODEL)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-embed a knowledge base with the configured (or given) embedding model into a new collection, then
    switch to it in one step and drop the old one; searches are served throughout. Restart servers with the
    same embedding settings afterwards."""
    from pydantic import ValidationError

    from app.container import Container
    from app.errors import KBError
    from app.settings import EmbeddingSettings

    settings = load_settings()
    if backend is not None or model is not None:
        chosen = settings.embedding.model_dump(exclude_unset=True)
        if backend is not None:
            chosen["backend"] = backend
            chosen.pop("model", None)  # the backend's own default unless --model names one
        if model is not None:
            chosen["model"] = model
        try:
            settings = settings.model_copy(update={"embedding": EmbeddingSettings.model_validate(chosen)})
        except ValidationError as exc:
            fail(f"invalid embedding settings:\n{exc}", 2)
    container = Container(settings)
    try:
        done = container.reindexing.reindex(
            kb, actor=Actor.local_admin(), progress=lambda n: typer.echo(f"{n} chunks re-embedded", err=True)
        )
    except KBError as exc:
        fail(exc.message, 2 if exc.status_code == 400 else 1)
    emit(
        {**dataclasses.asdict(done), "embedding_model": settings.embedding.model},
        as_json,
        f"re-indexed {kb}: {done.chunks} chunks with {settings.embedding.model} "
        f"({done.old_collection} -> {done.new_collection})",
    )
