"""The `kb` command line. Commands that print results accept --json (one JSON document on stdout).

Each command group lives in its own module; importing them here registers their commands on `cli`.
Other packages add command groups as plugins: entry points of the group `kb.commands`, each a Typer app
registered under the entry point's name (kb's own `kb eval` and `kb bench` come from `evaluation`, which
this package never imports).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

import typer
from rich.markup import escape

from app.cli import (  # noqa: F401  (registers commands)
    audit,
    config_models,
    ingest,
    kbs,
    keys,
    mcp,
    query,
    serve,
    ui,
)
from app.cli._common import cli

__all__ = ["PLUGIN_GROUP", "cli", "load_plugins", "main"]

PLUGIN_GROUP = "kb.commands"
log = logging.getLogger("kb")

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)[^;]*;.*\bextra\s*==\s*[\"']([^\"']+)[\"']")


def load_plugins(app: typer.Typer, found: Iterable[EntryPoint] | None = None) -> list[str]:
    """Register every `kb.commands` entry point on `app`; the names registered.

    A plugin that fails to load (an optional dependency not installed, say) must not take the rest of
    `kb` down: its name becomes a command that explains what is missing and exits 1."""
    taken = _command_names(app)
    registered = []
    for ep in entry_points(group=PLUGIN_GROUP) if found is None else found:
        if ep.name in taken:
            log.warning("ignoring plugin %s (%s): kb already has a command of that name", ep.name, ep.value)
            continue
        taken.add(ep.name)
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001  (any failure of third-party code at import)
            _unavailable(app, ep.name, _why(ep, exc))
            continue
        if not isinstance(plugin, typer.Typer):
            _unavailable(app, ep.name, f"kb {ep.name}: plugin {ep.value} is not a Typer app")
            continue
        app.add_typer(plugin, name=ep.name)
        registered.append(ep.name)
    return registered


def _command_names(app: typer.Typer) -> set[str]:
    # Typer names a command without an explicit name after its function (`ingest`, `jobs-work` style).
    names: set[str] = set()
    for command in app.registered_commands:
        if command.name:
            names.add(command.name)
        elif command.callback is not None:
            names.add(command.callback.__name__.lower().replace("_", "-"))
    for group in app.registered_groups:
        name = group.name or (group.typer_instance.info.name if group.typer_instance else None)
        if isinstance(name, str):
            names.add(name)
    return names


def _why(ep: EntryPoint, exc: Exception) -> str:
    """Names the extra to install when the missing module is a requirement of one of the plugin's extras."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and ep.dist is not None:
        missing = _normalise(exc.name.split(".")[0])
        for requirement in ep.dist.requires or []:
            match = _REQUIREMENT.match(requirement)
            if match and _normalise(match[1]) == missing:
                extra = match[2]
                return f"kb {ep.name} needs the {extra} extra: pip install '{ep.dist.name}[{extra}]'"
    return f"kb {ep.name} could not be loaded ({type(exc).__name__}: {exc})"


def _normalise(name: str) -> str:
    # Distribution names and module names differ in case and in '-', '_', '.' (langchain-milvus: langchain_milvus).
    return re.sub(r"[-_.]+", "_", name).lower()


def _unavailable(app: typer.Typer, name: str, message: str) -> None:
    def explain() -> None:
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(1)

    # Takes any arguments, so that `kb eval retrieval --dataset x` explains too instead of a usage error.
    settings = {"allow_extra_args": True, "ignore_unknown_options": True}
    # Escaped: the help is rendered as Rich markup, which would swallow "[eval]" in "kb[eval]".
    app.command(name, help=f"Unavailable: {escape(message)}", context_settings=settings)(explain)


def main() -> None:
    from ingest.loaders import LoadError
    from retrieval.milvus_connect import MilvusUnavailable
    from retrieval.store import StoreError

    load_plugins(cli)
    try:
        cli()
    except KeyboardInterrupt:
        sys.exit(130)
    except (MilvusUnavailable, StoreError, LoadError) as exc:
        # Expected operational failures get one line, not a traceback.
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
