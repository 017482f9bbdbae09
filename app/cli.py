"""The `kb` command line. Commands that print results accept --json (one JSON document on stdout)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import httpx
import typer
from pydantic import ValidationError

from app.logs import configure_logging
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
    configure_logging(settings.log_level)
    return settings


def emit(data: Any, as_json: bool, human: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        typer.echo(human)


# -- config -----------------------------------------------------------------------------------
@config_cli.command("show")
def config_show(as_json: JsonOpt = False) -> None:
    """Print the effective settings, secrets masked."""
    data = load_settings().masked()
    emit(data, as_json, json.dumps(data, ensure_ascii=False, indent=2))


# -- models -----------------------------------------------------------------------------------
@models_cli.command("prepare")
def models_prepare(as_json: JsonOpt = False) -> None:
    """Build the local default chat model folder and check the embedding model loads."""
    from retrieval.embedder import resolve_model_location
    from serving.models import ModelPrepareError, prepare_default_llm

    settings = load_settings()
    try:
        llm = str(prepare_default_llm(settings.models_path)) if not settings.llm.model else settings.llm.model
    except ModelPrepareError as exc:
        fail(str(exc))
    embedding = resolve_model_location(settings.embedding.model)
    emit({"llm": llm, "embedding": embedding}, as_json, f"llm: {llm}\nembedding: {embedding}")


# -- ingest / search / ask --------------------------------------------------------------------
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


@cli.command()
def search(
    query: str,
    kb: KbOpt = "default",
    top_k: Annotated[int, typer.Option(min=1, max=50)] = 5,
    mode: Annotated[Optional[str], typer.Option(help="dense, bm25 or hybrid")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Show the ranked chunks for a query, without calling the model."""
    from app.container import Container
    from app.schemas import SearchResponse

    if mode not in (None, "dense", "bm25", "hybrid"):
        fail("--mode must be dense, bm25 or hybrid", 2)
    container = Container(load_settings())
    r = container.query.search(query, kb=kb, top_k=top_k, mode=mode)  # type: ignore[arg-type]
    response = SearchResponse.from_retrieval(query, r)
    human = "\n\n".join(
        f"{h.rank}. [{h.score:.4f} {h.score_kind}] {h.title} ({h.doc_id}"
        + (f", page {h.page}" if h.page else "")
        + f")\n   {' '.join(h.text.split())[:300]}"
        for h in response.hits
    )
    emit(response.model_dump(), as_json, human or "no results")


@cli.command()
def ask(
    question: str,
    kb: KbOpt = "default",
    top_k: Annotated[Optional[int], typer.Option(min=1, max=50)] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Answer a question from the knowledge base, with citations."""
    from app.answering import Question
    from app.container import Container

    if not question.strip():
        fail("the question is empty", 2)
    container = Container(load_settings())
    answer = asyncio.run(container.answers.ask(Question(text=question, kb=kb, top_k=top_k)))
    lines = [answer.answer, ""]
    if answer.degraded:
        lines.insert(0, f"[degraded] {answer.message}")
    lines += [
        f"[{c.index}] {c.title} ({c.doc_id}" + (f", page {c.page}" if c.page else "") + ")" for c in answer.citations
    ]
    emit(answer.model_dump(), as_json, "\n".join(lines).strip())


# -- servers ----------------------------------------------------------------------------------
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
    try:
        if not settings.llm.model:
            prepare_default_llm(settings.models_path)
        server = _llm_server(settings)
        server.start(settings.llm.startup_timeout_s)
    except (LaunchError, ModelPrepareError) as exc:
        fail(str(exc))
    typer.echo(f"vLLM serving {settings.llm.served_model_name} at {server.base_url}", err=True)
    try:
        while server.proc is not None and server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@cli.command()
def up(skip_llm: Annotated[bool, typer.Option(help="Do not start a model server.")] = False) -> None:
    """Start the whole embedded stack: Milvus Lite, the model server, the API and the UI."""
    from app.container import Container, lite_layout
    from retrieval.milvus_connect import MilvusUnavailable, running_lite_uri, start_lite_server
    from serving.launcher import LaunchError
    from serving.models import ModelPrepareError, prepare_default_llm

    settings = load_settings()
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


def main() -> None:
    from ingest.loaders import LoadError
    from retrieval.milvus_connect import MilvusUnavailable
    from retrieval.store import StoreError

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
