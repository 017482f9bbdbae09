"""Shared pieces of the `kb` command line: the Typer apps, settings loading and output helpers."""

from __future__ import annotations

import json
import logging
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from app.ops.logs import configure_logging
from app.settings import Settings

log = logging.getLogger("kb")

cli = typer.Typer(name="kb", help="kb: a RAG knowledge base.", no_args_is_help=True, add_completion=False)
config_cli = typer.Typer(help="Inspect the effective settings.", no_args_is_help=True)
models_cli = typer.Typer(help="Prepare local models.", no_args_is_help=True)
serve_cli = typer.Typer(help="Start the API (`kb serve`) or the model server (`kb serve llm`).")
cli.add_typer(config_cli, name="config")
cli.add_typer(models_cli, name="models")
cli.add_typer(serve_cli, name="serve")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
KbOpt = Annotated[str, typer.Option("--kb", help="Knowledge base name.")]


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        fail(f"invalid settings:\n{exc}", 2)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def emit(data: object, as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        typer.echo(human)
