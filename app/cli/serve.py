"""`kb serve`, `kb serve llm` and `kb up`: run the services."""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING, Annotated, Optional

import httpx
import typer

from app.cli._common import cli, fail, load_settings, serve_cli
from app.settings import Settings

if TYPE_CHECKING:
    from app.container import Container


def _run_api(settings: Settings, container: Container | None = None) -> None:
    import uvicorn

    from app.container import Container
    from app.main import create_app

    container = container or Container(settings)
    _bootstrap(settings, container)
    app = create_app(settings, container)
    uvicorn.run(app, host=settings.api.host, port=settings.api.port, log_config=None, access_log=False)


@serve_cli.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    host: Annotated[Optional[str], typer.Option(help="Bind address.")] = None,  # noqa: UP045
    port: Annotated[Optional[int], typer.Option(min=1, max=65535)] = None,  # noqa: UP045
) -> None:
    """Start the API (with the chat UI at /ui) against the configured services."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    settings.api.host = host or settings.api.host
    settings.api.port = port or settings.api.port
    _run_api(settings)


@serve_cli.command("llm")
def serve_llm() -> None:
    """Start the vLLM model server alone and keep it running until Ctrl-C."""
    from app.cli.stack import llm_server, prepare_llm
    from serving.launcher import LaunchError
    from serving.models import ModelPrepareError

    settings = load_settings()
    if settings.llm.base_url:
        fail(
            f"KB_LLM__BASE_URL is set ({settings.llm.base_url}): kb uses that server and starts none; "
            "unset it to serve a local model"
        )
    stop_on_sigterm()
    server = None
    try:
        prepare_llm(settings)
        server = llm_server(settings)
        server.start(settings.llm.startup_timeout_s)
        typer.echo(f"vLLM serving {settings.llm.served_model_name} at {server.base_url}", err=True)
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
    except (LaunchError, ModelPrepareError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.stop()


def stop_on_sigterm() -> None:
    """Let `kill PID` stop kb like Ctrl-C does, so the servers it started are stopped too."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@cli.command()
def up(skip_llm: Annotated[bool, typer.Option(help="Do not start a model server.")] = False) -> None:
    """Start the whole embedded stack: Milvus Lite, the model server, the API and the UI."""
    from app.cli.stack import EmbeddedStack
    from app.container import Container
    from retrieval.milvus_connect import MilvusUnavailable
    from serving.launcher import LaunchError
    from serving.models import ModelPrepareError

    settings = load_settings()
    stop_on_sigterm()  # uvicorn installs its own handler while it serves, and restores this one after
    try:
        with EmbeddedStack(settings, with_llm=not skip_llm, say=lambda line: typer.echo(line, err=True)) as stack:
            container = Container(settings)
            _bootstrap(settings, container)
            stack.seed_demo(container)
            threading.Thread(target=_announce, args=(settings,), daemon=True).start()
            _run_api(settings, container)
    except (LaunchError, ModelPrepareError, MilvusUnavailable) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


def _bootstrap(settings: Settings, container: Container) -> None:
    from app.access.bootstrap import ensure_default_kb, first_admin_key

    ensure_default_kb(container.registry, settings)
    new = first_admin_key(container.keys, settings)
    if new is not None:
        # Printed once: only its hash is stored, so this is the one chance to copy it.
        typer.echo(
            f"\nCreated the first admin key (shown once, store it now):\n\n    {new.secret}\n\n"
            "Sign in to the UI with it, or send it as `Authorization: Bearer KEY`. "
            "Create keys for people with `kb keys create`.\n",
            err=True,
        )


def _announce(settings: Settings) -> None:
    url = f"http://{settings.api.host}:{settings.api.port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                typer.echo(f"\nkb is up.\n  API docs: {url}/docs\n  Chat UI:  {url}/ui\nPress Ctrl-C to stop.\n")
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
