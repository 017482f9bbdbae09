"""Documents and ingestion jobs as API callers see them: the service behind /documents and /jobs.

Every read goes through the caller's `Access`: a document is shown only to callers whose groups may
read it (while its groups are being changed, to those who may read it under both the old and the new
ones), and one the caller may not read is reported exactly like one that does not exist. Writes need
the same: an editor cannot replace, restore, regroup or delete a document it could not read.
Knowledge-base grants and audit rows are the routers' part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from app.errors import Forbidden, InvalidRequest, NotFound
from core.types import Access
from ingest.access import DocumentAccess
from ingest.documents import DocumentInfo, DocumentNotFound, DocumentService, FileGone, Original, VersionInfo
from ingest.errors import LoadError, UnsafeName
from ingest.job_views import JobDocument, JobInfo
from ingest.jobs import JobRow, JobStore
from ingest.labels import InvalidAccess
from ingest.registry import Registry, VersionRow, as_utc
from ingest.sources import ArchiveLimits, safe_doc_id

FINISHED_JOB_STATES = frozenset({"done", "failed", "cancelled"})


@dataclass(frozen=True)
class DocumentView:
    doc_id: str
    kb: str
    title: str
    version: int
    status: str
    chunks: int
    pages: int | None
    groups: list[str]
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    access_pending: bool

    @classmethod
    def of(cls, info: DocumentInfo, current: VersionRow | VersionInfo | None) -> DocumentView:
        chunks = 0
        pages = None
        if isinstance(current, VersionRow):
            chunks, pages = current.chunk_count, current.pages
        elif current is not None:
            chunks, pages = current.chunks, current.pages
        return cls(
            doc_id=info.doc_id, kb=info.kb, title=info.title, version=info.current_version, status=info.status,
            chunks=chunks, pages=pages, groups=list(info.acl_groups), tags=list(info.tags),
            created_at=as_utc(info.created_at), updated_at=as_utc(info.updated_at),
            access_pending=info.access_pending,
        )  # fmt: skip


@dataclass(frozen=True)
class DocumentFilter:
    status: str | None = None
    tag: str | None = None
    group: str | None = None
    q: str | None = None
    updated_since: datetime | None = None

    def matches(self, doc: DocumentView) -> bool:
        if self.status is not None and doc.status != self.status:
            return False
        if self.tag is not None and self.tag not in doc.tags:
            return False
        if self.group is not None and self.group not in doc.groups:
            return False
        if self.q and self.q.casefold() not in f"{doc.doc_id}\n{doc.title}".casefold():
            return False
        return self.updated_since is None or doc.updated_at >= self.updated_since


@dataclass(frozen=True)
class JobItemView:
    file: str
    doc_id: str
    status: str
    version: int
    pages: int | None
    chunks: int
    error: str
    error_code: str


@dataclass(frozen=True)
class JobView:
    job_id: str
    kb: str
    state: str
    stage: str
    current_file: str
    files_total: int
    files_done: int
    files_failed: int
    pages_done: int
    pages_total: int
    chunks_done: int
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    items: list[JobItemView]

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_JOB_STATES


@dataclass(frozen=True)
class JobSummaryView:
    job_id: str
    kb: str
    state: str
    stage: str
    files_total: int
    files_done: int
    files_failed: int
    error: str
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: JobRow) -> JobSummaryView:
        return cls(
            job_id=row.job_id, kb=row.kb, state=row.state, stage=row.stage, files_total=row.files_total,
            files_done=row.files_done, files_failed=row.files_failed, error=row.error,
            created_at=as_utc(row.created_at), finished_at=as_utc(row.finished_at) if row.finished_at else None,
        )  # fmt: skip


@dataclass(frozen=True)
class Accepted:
    """An upload, replacement or restore queued as a job."""

    job_id: str
    kb: str
    items: list[JobItemView]


@dataclass(frozen=True)
class AccessChanged:
    before: DocumentView
    after: DocumentView


def _missing(kb: str, doc_id: str) -> NotFound:
    # One message for a document that does not exist and one the caller may not read.
    return NotFound(f"no document {doc_id!r} in knowledge base {kb!r}")


class Library:
    def __init__(
        self, *, registry: Registry, documents: DocumentService, jobs: JobStore,
        access: Callable[[], DocumentAccess], uploads_dir: Path, archive_limits: ArchiveLimits,
    ) -> None:  # fmt: skip
        self._registry = registry
        self._documents = documents
        self._jobs = jobs
        # A callable: changing groups opens the vector store, reading documents does not.
        self._access = access
        self._uploads = uploads_dir
        self._archive_limits = archive_limits

    # -- reads ------------------------------------------------------------------------------------
    def readable(self, access: Access, kb: str) -> list[DocumentView]:
        """The documents of `kb` the caller may read, deleted ones left out, by document id."""
        current = self._registry.current_versions(kb)
        pending = self._registry.pending_access_groups(kb)
        return [
            DocumentView.of(info, current.get(info.doc_id))
            for info in self._documents.documents(kb)
            if _may_read(access, info.acl_groups, pending.get(info.doc_id))
        ]

    def page(
        self, access: Access, kb: str, where: DocumentFilter, *, limit: int, offset: int
    ) -> tuple[list[DocumentView], int]:
        found = [doc for doc in self.readable(access, kb) if where.matches(doc)]
        return found[offset : offset + limit], len(found)

    def get(self, access: Access, kb: str, doc_id: str) -> DocumentView:
        info = self._readable_info(access, kb, doc_id)
        return DocumentView.of(info, info.current)

    def versions(self, access: Access, kb: str, doc_id: str) -> list[VersionInfo]:
        self._readable_info(access, kb, doc_id)
        return self._documents.history(kb, doc_id)

    def original(self, access: Access, kb: str, doc_id: str, version: int | None = None) -> Original:
        """The file a version was made from. A past version is shown only to callers who may read the
        document now and could read that version under the groups it had."""
        self._readable_info(access, kb, doc_id)
        try:
            original = self._documents.original(kb, doc_id, version)
        except DocumentNotFound as exc:
            raise NotFound(str(exc)) from None
        except FileGone as exc:
            raise NotFound(str(exc)) from None
        if not access.can_read(original.version.acl_groups):
            raise NotFound(f"document {doc_id!r} has no version {version}")
        return original

    def job(self, job_id: str, *, may_use: Callable[[str], bool], access: Access, writer: bool) -> JobView:
        """A job of a knowledge base the caller is granted (404 otherwise). Callers who cannot write
        documents see only the files of documents they may read."""
        info = self._documents.job(job_id)
        if info is None or not may_use(info.kb):
            raise NotFound(f"no job {job_id!r}")
        return self._job_view(info, access=access, writer=writer)

    def jobs(
        self, *, kbs: list[str] | None, state: str | None, limit: int, offset: int
    ) -> tuple[list[JobSummaryView], int]:
        rows, total = self._jobs.page(kbs=kbs, state=state, limit=limit, offset=offset)
        return [JobSummaryView.of(row) for row in rows], total

    # -- writes -----------------------------------------------------------------------------------
    def upload(
        self, access: Access, kb: str, files: Sequence[tuple[Path, str]], *, job_id: str,
        groups: Sequence[str] | None, tags: Sequence[str] | None, doc_id: str | None = None,
    ) -> Accepted:  # fmt: skip
        """Queue uploaded files (path, checked name), stored as `uploads_dir/<job_id>/files/<name>`."""
        if not files:
            raise InvalidRequest("no file was uploaded (send one or more as the multipart field 'files')")
        if doc_id is not None:
            if len(files) != 1:
                raise InvalidRequest("a document id can only be given for a single file")
            doc_id = _doc_id(doc_id)
        for target in [doc_id] if doc_id is not None else [name for _, name in files]:
            self._may_write(access, kb, target)
        if doc_id is not None:
            return self._submit(kb, [files[0][0]], job_id=job_id, groups=groups, tags=tags, doc_id=doc_id)
        # Handed over as their folder, so that each file's relative name ("teamA/policy.md") is its id.
        folder = self._uploads / job_id / "files"
        if not all(path.parent.resolve().is_relative_to(folder.resolve()) for path, _ in files):
            raise ValueError(f"uploaded files must lie under {folder}")
        return self._submit(kb, [folder], job_id=job_id, groups=groups, tags=tags, doc_id=None)

    def replace(
        self, access: Access, kb: str, doc_id: str, path: Path, *, job_id: str,
        groups: Sequence[str] | None, tags: Sequence[str] | None,
    ) -> Accepted:  # fmt: skip
        """A new version of `doc_id` (which need not exist yet) from one uploaded file."""
        doc_id = _doc_id(doc_id)
        self._may_write(access, kb, doc_id)
        return self._submit(kb, [path], job_id=job_id, groups=groups, tags=tags, doc_id=doc_id)

    def restore(self, access: Access, kb: str, doc_id: str, version: int) -> Accepted:
        """Ingest version `version`'s file again, as the newest version (with the document's groups now)."""
        self.original(access, kb, doc_id, version)
        try:
            job_id = self._documents.restore(
                kb, doc_id, version, uploads_dir=self._uploads, archive_limits=self._archive_limits
            )
        except (DocumentNotFound, FileGone) as exc:
            raise NotFound(str(exc)) from None
        return self._accepted(job_id, kb)

    def set_access(
        self, access: Access, kb: str, doc_id: str, *, groups: Sequence[str] | None, tags: Sequence[str] | None
    ) -> AccessChanged:
        before = self.get(access, kb, doc_id)
        try:
            self._access().set(kb, doc_id, groups=groups, tags=tags)
        except InvalidAccess as exc:
            raise InvalidRequest(str(exc)) from None
        except DocumentNotFound:
            raise NotFound(f"document {doc_id!r} has no indexed version yet; try again when it has") from None
        info = self._documents.show(kb, doc_id)
        return AccessChanged(before, DocumentView.of(info, info.current))

    def delete(self, access: Access, kb: str, doc_id: str) -> DocumentView:
        """Hide the document from every query now; returns it as it was."""
        before = self.get(access, kb, doc_id)
        try:
            self._documents.delete(kb, doc_id)
        except DocumentNotFound:
            raise _missing(kb, doc_id) from None
        return before

    # -- helpers ----------------------------------------------------------------------------------
    def _readable_info(self, access: Access, kb: str, doc_id: str) -> DocumentInfo:
        try:
            info = self._documents.show(kb, doc_id)
        except DocumentNotFound:
            raise _missing(kb, doc_id) from None
        pending = self._registry.pending_access_groups(kb).get(doc_id) if info.access_pending else None
        if info.status == "deleted" or not _may_read(access, info.acl_groups, pending):
            raise _missing(kb, doc_id)
        return info

    def _may_write(self, access: Access, kb: str, doc_id: str) -> None:
        """A new version may replace only a document the caller may read (or one that is gone)."""
        row = self._registry.document(kb, doc_id)
        if row is None or row.status == "deleted":
            return
        pending = self._registry.pending_access_groups(kb).get(doc_id)
        if not _may_read(access, row.acl_groups, pending):
            raise Forbidden(f"this key may not replace document {doc_id!r}")

    def _submit(
        self, kb: str, paths: list[Path], *, job_id: str, groups: Sequence[str] | None,
        tags: Sequence[str] | None, doc_id: str | None,
    ) -> Accepted:  # fmt: skip
        try:
            self._documents.submit(
                paths, kb=kb, uploads_dir=self._uploads, acl_groups=groups, tags=tags, doc_id=doc_id,
                archive_limits=self._archive_limits, job_id=job_id,
            )  # fmt: skip
        except (InvalidAccess, LoadError) as exc:
            raise InvalidRequest(str(exc)) from None
        return self._accepted(job_id, kb)

    def _accepted(self, job_id: str, kb: str) -> Accepted:
        info = self._documents.job(job_id)
        assert info is not None
        return Accepted(job_id, kb, self._job_view(info, access=Access.everything(), writer=True).items)

    def _job_view(self, info: JobInfo, *, access: Access, writer: bool) -> JobView:
        items = [self._item(info.job_id, d) for d in info.documents]
        current_file = self._display(info.job_id, info.current_file) if info.current_file else ""
        if not writer:
            readable = {doc.doc_id for doc in self.readable(access, info.kb)}
            items = [item for item in items if item.doc_id in readable]
            if current_file not in {item.file for item in items}:
                current_file = ""
        return JobView(
            job_id=info.job_id, kb=info.kb, state=info.state, stage=info.stage, current_file=current_file,
            files_total=info.files.total, files_done=info.files.done, files_failed=info.files.failed,
            pages_done=info.pages.done, pages_total=info.pages.total, chunks_done=info.chunks_done, error=info.error,
            created_at=as_utc(info.created_at), started_at=as_utc(info.started_at) if info.started_at else None,
            finished_at=as_utc(info.finished_at) if info.finished_at else None, items=items,
        )  # fmt: skip

    def _item(self, job_id: str, d: JobDocument) -> JobItemView:
        return JobItemView(
            file=self._display(job_id, d.path), doc_id=d.doc_id, status=d.status, version=d.version, pages=d.pages,
            chunks=d.chunks, error=d.error, error_code=d.error_code,
        )  # fmt: skip

    def _display(self, job_id: str, path: str) -> str:
        """A job's file as people know it: its name in the upload (or archive), never a server path."""
        folder = (self._uploads / job_id).resolve()
        try:
            relative = Path(path).resolve().relative_to(folder).as_posix()
        except ValueError:
            return Path(path).name
        head, _, rest = relative.partition("/")
        return rest if head in ("files", "restore") and rest else relative


def _may_read(access: Access, groups: Sequence[str], pending: Sequence[str] | None) -> bool:
    return access.can_read(groups) and (pending is None or access.can_read(pending))


def _doc_id(raw: str) -> str:
    try:
        return safe_doc_id(raw)
    except UnsafeName as exc:
        raise InvalidRequest(str(exc)) from None
