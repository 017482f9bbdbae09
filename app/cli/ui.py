"""`kb ui`: the web app alone, against a kb API elsewhere (the API serves it at /ui itself too)."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli._common import cli, load_settings


@cli.command("ui")
def ui(
    api: Annotated[str, typer.Option("--api", help="The kb API's URL, e.g. https://kb.example.com")],
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 7860,
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest file the app accepts for upload.")] = 100,
) -> None:
    """Serve the web app (chat, documents, keys, audit) at http://HOST:PORT/ui, calling the API at --api
    with each signed-in user's own key."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import RedirectResponse

    from ui.app import mount_ui

    load_settings()  # logging as configured
    app = FastAPI(title="kb web app", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    mount_ui(app, api_url=api, path="/ui", max_file_size=max_upload_mb * 1024 * 1024)
    typer.echo(f"kb web app: http://{host}:{port}/ui/ (API {api})", err=True)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
