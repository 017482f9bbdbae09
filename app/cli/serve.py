"""`kb serve`, `kb serve llm` and `kb up`: run the services."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import Annotated, Any, Optional

import httpx
import typer

from app.cli._common import cli, fail, load_settings, log, serve_cli
from app.settings import Settings


def _llm_server(settings: Settings) -> Any:
    from serving.launcher import LLMServer, LLMServerConfig

    return LLMServer(
        LLMServerConfig(
            python=settings.llm.python,
            model=settings.llm_model_path,
            served_model_name=settings.llm.served_model_name,
            host=settings.llm.host,
            port=settings.llm.port,
            max_model_len=settings.llm.max_model_len,
            dtype=settings.llm.dtype,
            kv_cache_bytes=settings.llm.kv_cache_bytes,
            tensor_parallel_size=settings.llm.tensor_parallel_size,
            gpu_memory_utilization=settings.llm.gpu_memory_utilization,
            cache_root=settings.home / "cache" / "vllm",
            log_path=settings.home / "logs" / "vllm.log",
            api_key=settings.llm.api_key.get_secret_value(),
            device=settings.llm.device,
        )
    )


def _run_api(settings: Settings, container: Any = None) -> None:
    import uvicorn

    from app.main import create_app

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
    from serving.launcher import LaunchError
    from serving.models import ModelPrepareError, prepare_default_llm

    settings = load_settings()
    if settings.llm.base_url:
        fail(
            f"KB_LLM__BASE_URL is set ({settings.llm.base_url}): kb uses that server and starts none; "
            "unset it to serve a local model"
        )
    stop_on_sigterm()
    server = None
    try:
        if not settings.llm.model:
            prepare_default_llm(settings.models_path)
        server = _llm_server(settings)
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
    from app.container import Container, lite_layout
    from retrieval.milvus_connect import MilvusUnavailable, running_lite_uri, start_lite_server
    from serving.launcher import LaunchError
    from serving.models import ModelPrepareError, prepare_default_llm

    settings = load_settings()
    stop_on_sigterm()  # uvicorn installs its own handler while it serves, and restores this one after
    started: list[Any] = []  # stopped in reverse order on exit
    milvus_proc: subprocess.Popen[bytes] | None = None
    try:
        if not settings.milvus.uri and running_lite_uri(lite_layout(settings)) is None:
            milvus_proc = start_lite_server(lite_layout(settings), settings.milvus.lite_host, settings.milvus.lite_port)
        if not skip_llm and not settings.llm.base_url:
            if not settings.llm.model:
                prepare_default_llm(settings.models_path)
            server = _llm_server(settings)
            if server.is_ready():
                log.info("a model server already answers at %s; using it", server.base_url)
            else:
                typer.echo("starting the model server (vLLM; about a minute on a CPU)...", err=True)
                server.start(settings.llm.startup_timeout_s)
                started.append(server)
        elif settings.llm.base_url:
            typer.echo(f"using the external model server at {settings.llm.base_url} (no launcher)", err=True)
        container = Container(settings)
        if not container.registry.documents("default") and settings.ingest.demo_dir.is_dir():
            typer.echo(f"first start: ingesting demo documents from {settings.ingest.demo_dir}", err=True)
            container.ingest.ingest_paths([settings.ingest.demo_dir], kb="default")
        threading.Thread(target=_announce, args=(settings,), daemon=True).start()
        _run_api(settings, container)
    except (LaunchError, ModelPrepareError, MilvusUnavailable) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        for server in reversed(started):
            server.stop()
        if milvus_proc is not None:
            milvus_proc.terminate()
            milvus_proc.wait(timeout=20)


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
