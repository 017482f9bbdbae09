"""`kb ingest`, `kb jobs ...` and `kb docs ...`: feed the knowledge base and look after its documents."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from app.cli._common import JsonOpt, KbOpt, cli, emit, fail, load_settings
from app.settings import Settings

jobs_cli = typer.Typer(help="Ingestion jobs: progress, errors, and the worker that runs them.", no_args_is_help=True)
docs_cli = typer.Typer(help="Documents in a knowledge base: list, show, history, delete.", no_args_is_help=True)
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(docs_cli, name="docs")

T = TypeVar("T")
DocIdArg = Annotated[str, typer.Argument(help="Document id (as `kb docs list` shows it).")]


def _container(settings: Settings) -> Any:
    from app.container import Container

    return Container(settings)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    return value


# -- ingest -----------------------------------------------------------------------------------
@cli.command()
def ingest(  # noqa: PLR0917 - typer maps parameters to options
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or zip archives.")],
    kb: KbOpt = "default",
    doc_id: Annotated[Optional[str], typer.Option("--doc-id", help="Document id for a single file.")] = None,  # noqa: UP045
    acl: Annotated[Optional[list[str]], typer.Option("--acl", help="Group allowed to read (repeat).")] = None,  # noqa: UP045
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help="Tag (repeat).")] = None,  # noqa: UP045
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job, with a progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue documents for ingestion (parse, chunk, embed, index). Unchanged files are skipped."""
    from ingest.documents import DocumentService
    from ingest.errors import LoadError

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or folder: {', '.join(missing)}")
    settings = load_settings()
    container = _container(settings)
    service: DocumentService = container.documents
    try:
        job_id = service.submit(
            paths, kb=kb, uploads_dir=container.uploads_dir, acl_groups=acl or [], tags=tag or [], doc_id=doc_id,
            archive_limits=container.archive_limits,
        )  # fmt: skip
    except LoadError as exc:
        fail(str(exc), 2)
    if not wait:
        if not container.jobs.live_workers():
            _spawn_worker(settings)
        emit(
            {"job_id": job_id, "state": "queued"},
            as_json,
            f"queued job {job_id}\nfollow it with: kb jobs show {job_id}",
        )
        return
    if not container.jobs.live_workers():
        # No worker is running (no `kb up`): this process works the queue while it shows progress.
        runner = threading.Thread(target=container.worker().run, kwargs={"until_idle": True}, daemon=True)
        runner.start()
    view = _follow(container, job_id, show_bar=not as_json)
    _report(view, as_json)


def _spawn_worker(settings: Settings) -> None:
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "worker.log").open("ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "jobs", "work", "--until-idle"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "KB_HOME": str(settings.home)},
        )  # fmt: skip


def _follow(container: Any, job_id: str, *, show_bar: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=not show_bar, transient=False) as bar:
        files = bar.add_task("files", total=None)
        pages = bar.add_task("pages", total=None)
        while True:
            view = container.jobs.get(job_id)
            job = view.job
            bar.update(files, total=job.files_total, completed=job.files_done,
                       description=f"{job.stage:9} {Path(job.current_file).name[:40]}")  # fmt: skip
            bar.update(pages, total=job.pages_total or None, completed=job.pages_done,
                       description=f"pages     {job.chunks_done} chunks")  # fmt: skip
            if job.state in ("done", "failed"):
                return view
            time.sleep(0.5)


def _job_data(view: Any) -> dict[str, Any]:
    job = view.job
    return {
        "job_id": job.job_id, "kb": job.kb, "state": job.state, "stage": job.stage, "current_file": job.current_file,
        "files": {"total": job.files_total, "done": job.files_done, "failed": job.files_failed},
        "pages": {"total": job.pages_total, "done": job.pages_done}, "chunks_done": job.chunks_done,
        "timings_ms": {k: round(v, 1) for k, v in (job.timings or {}).items()}, "error": job.error,
        "attempts": job.attempts, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at,
        "documents": [
            {"path": i.path, "doc_id": i.doc_id, "status": i.status, "version": i.version, "pages": i.pages,
             "chunks": i.chunks, "error": i.error, "error_code": i.error_code}
            for i in view.items
        ],
    }  # fmt: skip


def _report(view: Any, as_json: bool) -> None:
    data = _job_data(view)
    lines = [
        f"{d['status']:9} {d['doc_id']}  v{d['version']}  {d['chunks']} chunks"
        + (f"  {d['error']}" if d["error"] else "")
        for d in data["documents"]
    ]
    lines.append(
        f"job {data['job_id']}: {data['state']}, {data['files']['done']} files ({data['files']['failed']} failed), "
        f"{data['pages']['done']} pages, {data['chunks_done']} chunks"
    )
    emit(data, as_json, "\n".join(lines))
    if data["files"]["failed"]:
        raise typer.Exit(1)


# -- jobs -------------------------------------------------------------------------------------
@jobs_cli.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    """Progress, per-stage timings and per-file errors of one job."""
    container = _container(load_settings())
    view = container.jobs.get(job_id)
    if view is None:
        fail(f"no job {job_id}")
    data = _job_data(view)
    lines = [
        f"job {data['job_id']}  {data['state']} ({data['stage']})  kb={data['kb']}",
        f"files {data['files']['done']}/{data['files']['total']} ({data['files']['failed']} failed)  "
        f"pages {data['pages']['done']}/{data['pages']['total']}  chunks {data['chunks_done']}",
        "timings: " + ", ".join(f"{k} {v:.0f}" for k, v in data["timings_ms"].items()),
    ]
    lines += [f"  {d['status']:9} {d['doc_id']}" + (f"  [{d['error_code']}] {d['error']}" if d["error"] else "")
              for d in data["documents"]]  # fmt: skip
    emit(data, as_json, "\n".join(lines))


@jobs_cli.command("list")
def jobs_list(limit: Annotated[int, typer.Option(min=1, max=1000)] = 20, as_json: JsonOpt = False) -> None:
    """The most recent jobs."""
    container = _container(load_settings())
    rows = container.jobs.recent(limit=limit)
    data = [{"job_id": j.job_id, "kb": j.kb, "state": j.state, "stage": j.stage, "files": j.files_total,
             "failed": j.files_failed, "created_at": j.created_at} for j in rows]  # fmt: skip
    human = "\n".join(f"{d['job_id']}  {d['state']:7} {d['files']} files ({d['failed']} failed)  {d['created_at']}"
                      for d in data)  # fmt: skip
    emit(data, as_json, human or "no jobs")


@jobs_cli.command("work")
def jobs_work(
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit when the queue is empty.")] = False,
) -> None:
    """Run an ingestion worker (`kb up` runs one inside the API)."""
    container = _container(load_settings())
    stop = threading.Event()
    try:
        container.worker().run(stop, until_idle=until_idle)
    except KeyboardInterrupt:
        stop.set()


# -- docs -------------------------------------------------------------------------------------
def _known_document(call: Callable[[], T]) -> T:
    """Run a document command; an unknown document id is a one-line error, not a traceback."""
    from ingest.documents import DocumentNotFound

    try:
        return call()
    except DocumentNotFound as exc:
        fail(str(exc))


@docs_cli.command("list")
def docs_list(kb: KbOpt = "default", deleted: bool = False, as_json: JsonOpt = False) -> None:
    """Documents with their current version, status and ACL groups."""
    container = _container(load_settings())
    docs = container.documents.documents(kb, include_deleted=deleted)
    data = [_plain(d) for d in docs]
    human = "\n".join(f"{d.status:8} {d.doc_id}  v{d.current_version}  {d.title[:50]}"
                      + (f"  groups={','.join(d.acl_groups)}" if d.acl_groups else "") for d in docs)  # fmt: skip
    emit(data, as_json, human or "no documents")


@docs_cli.command("show")
def docs_show(doc_id: DocIdArg, kb: KbOpt = "default", as_json: JsonOpt = False) -> None:
    """One document and its current version."""
    container = _container(load_settings())
    info = _known_document(lambda: container.documents.show(kb, doc_id))
    data = _plain(info)
    cur = info.current
    human = f"{info.doc_id}: {info.title}\n  status {info.status}, version {info.current_version}, source {info.source}"
    if cur is not None:
        human += f"\n  {cur.pages or '-'} pages, {cur.chunks} chunks, sha256 {cur.sha256[:12]}, {cur.size_bytes} bytes"
    emit(data, as_json, human)


@docs_cli.command("history")
def docs_history(doc_id: DocIdArg, kb: KbOpt = "default", as_json: JsonOpt = False) -> None:
    """Every version of a document, newest first."""
    container = _container(load_settings())
    versions = _known_document(lambda: container.documents.history(kb, doc_id))
    human = "\n".join(f"v{v.version}  {v.status:11} {v.chunks} chunks  {v.created_at:%Y-%m-%d %H:%M}  {v.sha256[:12]}"
                      + (f"  {v.error}" if v.error else "") for v in versions)  # fmt: skip
    emit([_plain(v) for v in versions], as_json, human)


@docs_cli.command("delete")
def docs_delete(doc_id: DocIdArg, kb: KbOpt = "default", as_json: JsonOpt = False) -> None:
    """Remove a document's chunks from the index and mark it deleted (its history stays)."""
    container = _container(load_settings())
    deleted = _known_document(lambda: container.documents.delete(kb, doc_id))
    emit(
        {"doc_id": doc_id, "deleted": deleted},
        as_json,
        f"deleted {doc_id}" if deleted else f"{doc_id} was already deleted",
    )
