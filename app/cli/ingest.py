"""`kb ingest`: add documents to a knowledge base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli._common import JsonOpt, KbOpt, cli, emit, fail, load_settings


@cli.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders.")],
    kb: KbOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Parse, chunk, embed and index documents. Unchanged files are skipped."""
    from app.container import Container

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or folder: {', '.join(missing)}")
    container = Container(load_settings())
    results = container.ingest.ingest_paths(paths, kb=kb)
    rows = [r.__dict__ for r in results]
    human = "\n".join(
        f"{r.status:9} {r.doc_id}  v{r.version}  {r.chunks} chunks" + (f"  {r.error}" if r.error else "")
        for r in results
    )
    emit({"kb": kb, "documents": rows}, as_json, human or "nothing to ingest")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)
