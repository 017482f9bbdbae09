"""`kb ingest`, `kb jobs ...` and `kb docs ...`: feed the knowledge base and look after its documents."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, TypeVar

import typer

from app.audit.trail import Action, Actor
from app.cli._common import JsonOpt, KbOpt, cli, emit, fail, load_settings
from app.settings import Settings

if TYPE_CHECKING:
    from app.container import Container
    from ingest.documents import DocumentInfo, DocumentService, VersionInfo
    from ingest.job_views import JobInfo

jobs_cli = typer.Typer(help="Ingestion jobs: progress, errors, and the worker that runs them.", no_args_is_help=True)
docs_cli = typer.Typer(
    help="Documents in a knowledge base: list, show, history, delete, set-acl.", no_args_is_help=True
)
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(docs_cli, name="docs")

T = TypeVar("T")
DocIdArg = Annotated[str, typer.Argument(help="Document id (as `kb docs list` shows it).")]


def _container(settings: Settings) -> Container:
    # Imported here, not at the top: it loads the models' libraries, which `kb --help` does not need.
    from app.container import Container

    return Container(settings)


def _data(view: JobInfo | DocumentInfo | VersionInfo) -> dict[str, object]:
    """The JSON document of a view: its fields in order, nested views included."""
    return dataclasses.asdict(view)


# -- ingest -----------------------------------------------------------------------------------
_ACL_HELP = (
    "Group allowed to read (repeat). Not given: each document keeps its groups, a new one gets its knowledge "
    "base's default groups. Given: replaces them; --acl '' for none (admins only)."
)
_TAG_HELP = "Tag (repeat). Not given: each document keeps its tags. Given: replaces them; --tag '' for none."


def _given(values: list[str] | None) -> list[str] | None:
    """None when the option was not given (keep / kb default); a list, possibly empty, when it was."""
    return None if values is None else [v for v in values if v.strip()]


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@cli.command()
def ingest(  # noqa: PLR0917 - typer maps parameters to options
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or zip archives.")],
    kb: KbOpt = "default",
    doc_id: Annotated[Optional[str], typer.Option("--doc-id", help="Document id for a single file.")] = None,  # noqa: UP045
    acl: Annotated[Optional[list[str]], typer.Option("--acl", help=_ACL_HELP)] = None,  # noqa: UP045
    tag: Annotated[Optional[list[str]], typer.Option("--tag", help=_TAG_HELP)] = None,  # noqa: UP045
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the job, with a progress bar.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Queue documents for ingestion (parse, chunk, embed, index). Unchanged files are skipped.

    Groups and tags belong to the document: without --acl a document keeps the groups it has (a new one
    gets its knowledge base's default groups, see `kb kb list`); --acl replaces them. A document without
    groups is readable by admins only. Change them later without re-ingesting: `kb docs set-acl`."""
    from app.worker import ensure_worker, run_worker, worker_alive
    from ingest.errors import LoadError
    from ingest.labels import InvalidAccess

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or folder: {', '.join(missing)}")
    container = _container(load_settings())
    try:
        job_id = container.documents.submit(
            paths, kb=kb, uploads_dir=container.uploads_dir, acl_groups=_given(acl), tags=_given(tag), doc_id=doc_id,
            archive_limits=container.archive_limits,
        )  # fmt: skip
    except (LoadError, InvalidAccess) as exc:
        fail(str(exc), 2)
    if not wait:
        # A detached worker, so that the job completes after this command returns.
        ensure_worker(container)
        emit(
            {"job_id": job_id, "state": "queued"},
            as_json,
            f"queued job {job_id}\nfollow it with: kb jobs show {job_id}",
        )
        return
    runner: threading.Thread | None = None
    if not worker_alive(container):
        # No worker is running (no `kb up`): this process works the queue while it shows progress.
        runner = threading.Thread(
            target=run_worker, args=(container,), kwargs={"until_idle": True}, name="kb-ingest-worker", daemon=True
        )
        runner.start()
    info = _follow(container.documents, job_id, runner, show_bar=not as_json)
    if runner is not None:
        # It leaves once the versions this job replaced are purged, at most the grace period from now.
        runner.join()
    _report(info, as_json)


def _follow(documents: DocumentService, job_id: str, runner: threading.Thread | None, *, show_bar: bool) -> JobInfo:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=not show_bar, transient=False) as bar:
        files = bar.add_task("files", total=None)
        pages = bar.add_task("pages", total=None)
        while True:
            # Read before the job: a worker that ended after finishing the job is not a failure.
            runner_gone = runner is not None and not runner.is_alive()
            info = documents.job(job_id)
            if info is None:
                fail(f"job {job_id} disappeared")
            bar.update(files, total=info.files.total, completed=info.files.done,
                       description=f"{info.stage:9} {Path(info.current_file).name[:40]}")  # fmt: skip
            bar.update(pages, total=info.pages.total or None, completed=info.pages.done,
                       description=f"pages     {info.chunks_done} chunks")  # fmt: skip
            if info.finished:
                return info
            if runner_gone:
                fail(f"the ingestion worker stopped before job {job_id} finished; see the log above")
            time.sleep(0.5)


def _report(info: JobInfo, as_json: bool) -> None:
    lines = [
        f"{d.status:9} {d.doc_id}  v{d.version}  {d.chunks} chunks" + (f"  {d.error}" if d.error else "")
        for d in info.documents
    ]
    lines.append(
        f"job {info.job_id}: {info.state}, {info.files.done} files ({info.files.failed} failed), "
        f"{info.pages.done} pages, {info.chunks_done} chunks"
    )
    emit(_data(info), as_json, "\n".join(lines))
    if info.files.failed or info.state == "cancelled":
        raise typer.Exit(1)


# -- jobs -------------------------------------------------------------------------------------
@jobs_cli.command("show")
def jobs_show(job_id: str, as_json: JsonOpt = False) -> None:
    """Progress, per-stage timings and per-file errors of one job."""
    info = _container(load_settings()).documents.job(job_id)
    if info is None:
        fail(f"no job {job_id}")
    lines = [
        f"job {info.job_id}  {info.state} ({info.stage})  kb={info.kb}",
        f"files {info.files.done}/{info.files.total} ({info.files.failed} failed)  "
        f"pages {info.pages.done}/{info.pages.total}  chunks {info.chunks_done}",
        "timings: " + ", ".join(f"{k} {v:.0f}" for k, v in info.timings_ms.items()),
    ]
    lines += [f"  {d.status:9} {d.doc_id}" + (f"  [{d.error_code}] {d.error}" if d.error else "")
              for d in info.documents]  # fmt: skip
    emit(_data(info), as_json, "\n".join(lines))


@jobs_cli.command("list")
def jobs_list(limit: Annotated[int, typer.Option(min=1, max=1000)] = 20, as_json: JsonOpt = False) -> None:
    """The most recent jobs."""
    jobs = _container(load_settings()).documents.recent_jobs(limit=limit)
    human = "\n".join(f"{j.job_id}  {j.state:7} {j.files} files ({j.failed} failed)  {j.created_at}" for j in jobs)
    emit([dataclasses.asdict(j) for j in jobs], as_json, human or "no jobs")


@jobs_cli.command("cancel")
def jobs_cancel(job_id: str, as_json: JsonOpt = False) -> None:
    """Cancel a job: a queued one at once; a running one between files (the file under way is rolled back,
    files already finished stay published)."""
    state = _container(load_settings()).documents.cancel_job(job_id)
    if state is None:
        fail(f"no job {job_id}")
    human = {
        "cancelled": f"cancelled job {job_id}",
        "cancelling": f"job {job_id} stops after the file under way (rolled back); see kb jobs show {job_id}",
    }.get(state, f"job {job_id} had finished ({state}); nothing to cancel")
    emit({"job_id": job_id, "state": state}, as_json, human)


_UNTIL_IDLE = typer.Option("--until-idle", help="Exit when no job is queued and no purge is pending.")


@jobs_cli.command("work")
def jobs_work(until_idle: Annotated[bool, _UNTIL_IDLE] = False) -> None:
    """Run an ingestion worker (`kb up` runs one inside the API); it also purges retired versions when due.
    The same as `kb worker`."""
    _work(until_idle)


_CONCURRENCY = typer.Option(
    "--concurrency", min=1, max=64,
    help="Deliveries run at once (KB_INGEST__ENGINE=procrastinate; default KB_INGEST__WORKER_CONCURRENCY).",
)  # fmt: skip


@cli.command("worker")
def worker(
    until_idle: Annotated[bool, _UNTIL_IDLE] = False,
    concurrency: Annotated[Optional[int], _CONCURRENCY] = None,  # noqa: UP045
) -> None:
    """Run an ingestion worker. Any number can run, on any number of machines, against the same database,
    Milvus and uploads folder: they share the queue file by file (a big job is spread over all of them),
    and a worker that dies (even kill -9) has its files taken over by the others. With
    KB_INGEST__ENGINE=procrastinate it is a procrastinate worker on the registry's PostgreSQL."""
    _work(until_idle, concurrency)


def _work(until_idle: bool, concurrency: int | None = None) -> None:
    from app.ops.logs import configure_logging
    from app.worker import run_worker

    settings = load_settings()
    if concurrency is not None:
        settings.ingest.worker_concurrency = concurrency
    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()
    try:
        run_worker(_container(settings), stop, until_idle=until_idle)
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
    data = [_data(d) for d in docs]
    human = "\n".join(f"{d.status:8} {d.doc_id}  v{d.current_version}  {d.title[:50]}"
                      + f"  groups={','.join(d.acl_groups) or '-'}"
                      + ("  (hidden: access change pending)" if d.access_pending else "") for d in docs)  # fmt: skip
    emit(data, as_json, human or "no documents")


@docs_cli.command("show")
def docs_show(doc_id: DocIdArg, kb: KbOpt = "default", as_json: JsonOpt = False) -> None:
    """One document and its current version."""
    container = _container(load_settings())
    info = _known_document(lambda: container.documents.show(kb, doc_id))
    data = _data(info)
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
    emit([_data(v) for v in versions], as_json, human)


@docs_cli.command("delete")
def docs_delete(doc_id: DocIdArg, kb: KbOpt = "default", as_json: JsonOpt = False) -> None:
    """Hide a document from queries now and mark it deleted (its history stays); a worker purges its chunks."""
    from app.worker import ensure_worker

    settings = load_settings()
    container = _container(settings)
    deleted = _known_document(lambda: container.documents.delete(kb, doc_id))
    if deleted:
        container.audit.record(Action.delete, actor=Actor.local_admin(), kb=kb, target=doc_id)
    if not deleted:
        emit({"doc_id": doc_id, "deleted": False}, as_json, f"{doc_id} was already deleted")
        return
    # Queries that started before the delete may still read its chunks for the grace period; the worker
    # (the API's, or one started here in the background) removes them when it has passed.
    started = ensure_worker(container)
    when = f"in {settings.ingest.purge_grace_s:g} s by " + ("a background worker" if started else "the running worker")
    emit({"doc_id": doc_id, "deleted": True}, as_json, f"deleted {doc_id}; its chunks are purged {when}")


@docs_cli.command("set-acl")
def docs_set_acl(
    doc_id: DocIdArg,
    kb: KbOpt = "default",
    groups: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--groups", help="Comma-separated groups that may read it ('' for none: admins only)."),
    ] = None,
    tags: Annotated[Optional[str], typer.Option("--tags", help="Comma-separated tags ('' for none).")] = None,  # noqa: UP045
    as_json: JsonOpt = False,
) -> None:
    """Change who may read a document (and its tags) without re-ingesting it; searches see the change when
    this returns. The document is hidden from everyone while its chunks are rewritten."""
    from app.worker import ensure_worker
    from ingest.labels import InvalidAccess

    if groups is None and tags is None:
        fail("nothing to change: give --groups and/or --tags", 2)
    container = _container(load_settings())
    try:
        result = _known_document(lambda: container.access.set(kb, doc_id, groups=_split(groups), tags=_split(tags)))
    except InvalidAccess as exc:
        fail(str(exc), 2)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the document stays hidden until a worker repairs it
        ensure_worker(container)
        fail(f"changing the groups of {doc_id} failed part-way ({exc}); it stays hidden until a worker finishes it")
    container.audit.record(
        Action.acl_change, actor=Actor.local_admin(), kb=kb, target=doc_id,
        detail={"groups": result.acl_groups, "tags": result.tags},
    )  # fmt: skip
    data = dataclasses.asdict(result)
    human = (
        f"{doc_id} v{result.version}: groups {','.join(result.acl_groups) or '- (admins only)'}, "
        f"tags {','.join(result.tags) or '-'}, {result.chunks} chunks rewritten"
    )
    if result.pending:
        human += "\n(another process is finishing the change; the document is hidden until it has)"
    emit(data, as_json, human)
