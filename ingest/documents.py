"""DocumentService: what admins do with documents (submit and follow jobs, list, show, history, delete),
for CLI and API."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from core.names import KB_NAME
from ingest.errors import LoadError
from ingest.files import FileStore
from ingest.job_views import JobInfo, JobSummary
from ingest.jobs import JobFile, JobStore
from ingest.labels import InvalidAccess, check_labels
from ingest.registry import DocumentRow, Registry, VersionRow
from ingest.sources import ArchiveLimits, expand_sources
from ingest.versions import sha256_file


class DocumentNotFound(LookupError):
    pass


class FileGone(LookupError):
    """A version's original bytes are no longer anywhere kb can read them (a folder's file since removed)."""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    status: str
    sha256: str
    size_bytes: int
    pages: int | None
    chunks: int
    source: str
    error: str
    error_code: str
    job_id: str
    acl_groups: list[str]
    tags: list[str]
    timings: dict[str, float]
    created_at: datetime
    published_at: datetime | None

    @classmethod
    def of(cls, row: VersionRow) -> VersionInfo:
        return cls(
            version=row.version, status=row.status, sha256=row.sha256, size_bytes=row.size_bytes, pages=row.pages,
            chunks=row.chunk_count, source=row.source, error=row.error, error_code=row.error_code, job_id=row.job_id,
            acl_groups=list(row.acl_groups), tags=list(row.tags), timings=dict(row.timings or {}),
            created_at=row.created_at, published_at=row.published_at,
        )  # fmt: skip


@dataclass(frozen=True)
class DocumentInfo:
    kb: str
    doc_id: str
    title: str
    source: str
    status: str
    current_version: int
    acl_groups: list[str]
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    current: VersionInfo | None = None
    # True while a change of its groups or tags is under way (or was left part-way): hidden from readers.
    access_pending: bool = False

    @classmethod
    def of(cls, row: DocumentRow, current: VersionRow | None = None, *, access_pending: bool = False) -> DocumentInfo:
        return cls(
            kb=row.kb, doc_id=row.doc_id, title=row.title, source=row.source, status=row.status,
            current_version=row.current_version, acl_groups=list(row.acl_groups), tags=list(row.tags),
            created_at=row.created_at, updated_at=row.updated_at, current=VersionInfo.of(current) if current else None,
            access_pending=access_pending,
        )  # fmt: skip


class DocumentService:
    def __init__(
        self, *, registry: Registry, jobs: JobStore, default_groups: Sequence[str] = (), files: FileStore | None = None,
        deliver: Callable[[Session, str, int], None] | None = None,
    ) -> None:  # fmt: skip
        self._registry = registry
        self._jobs = jobs
        # A task engine's hook: hands a new job's files to its workers, in the transaction that queues it.
        self._deliver = deliver
        # Where the bytes of files in the uploads folder are kept before a worker removes that folder.
        self._files = files
        # The groups a knowledge base first named by an ingest gets for its documents (settings).
        self._default_groups = list(default_groups)

    def submit(
        self,
        paths: Sequence[Path],
        *,
        kb: str,
        uploads_dir: Path,
        acl_groups: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        doc_id: str | None = None,
        archive_limits: ArchiveLimits = ArchiveLimits(),
        job_id: str | None = None,
    ) -> str:
        """Queue an ingestion job for files, folders and zip archives; returns the job id.

        A `doc_id` given names the one file's document explicitly: it replaces whatever document has that
        id. Otherwise a file whose id is taken by a document of another origin fails (`doc_id_conflict`).

        Groups and tags not given (None) are each document's own, or for a new one its knowledge base's
        default groups; given ones (even empty) replace them. A knowledge base not seen before is created
        with the configured default groups. `job_id` (from `JobStore.new_id`) names the job when the
        caller has already put files in its uploads folder, `uploads_dir/<job_id>`."""
        if doc_id is not None and (len(paths) != 1 or paths[0].is_dir()):
            raise LoadError("a document id can only be given for a single file")
        if not KB_NAME.match(kb):
            raise InvalidAccess(f"knowledge base {kb!r} must be 1-64 letters, digits or underscores")
        groups = check_labels(acl_groups, "group") if acl_groups is not None else None
        labels = check_labels(tags, "tag") if tags is not None else None
        self._registry.create_knowledge_base(kb, default_groups=self._default_groups)
        job_id = job_id or self._jobs.new_id()
        files = []
        uploads = uploads_dir.resolve()
        for source in expand_sources(paths, doc_id=doc_id, extract_dir=uploads_dir / job_id, limits=archive_limits):
            error = source.error
            # An upload's file lives in a folder of its own job: its origin is its name, so that uploading
            # policy.md again replaces the policy.md uploaded before.
            given = source.archive or source.path  # the file, or the archive it came out of
            origin = f"upload:{source.doc_id}" if given.resolve().is_relative_to(uploads) else source.origin
            if error is None and self._files is not None and source.path.resolve().is_relative_to(uploads):
                # Before the job exists: its worker may remove the uploads folder as soon as it has run.
                self._files.keep(kb, source.path)
            files.append(
                JobFile(
                    path=str(source.path.resolve()), doc_id=source.doc_id,
                    error=str(error) if error else "", error_code=error.code if error else "",
                    origin=origin, replace=doc_id is not None,
                )
            )  # fmt: skip
        return self._jobs.create(kb, files, acl_groups=groups, tags=labels, job_id=job_id, then=self._deliver)

    def cancel_job(self, job_id: str) -> str | None:
        """Cancel a job (see JobStore.cancel): its state now, or None when there is no such job."""
        return self._jobs.cancel(job_id)

    def job(self, job_id: str) -> JobInfo | None:
        view = self._jobs.get(job_id)
        return JobInfo.of(view) if view is not None else None

    def recent_jobs(self, *, limit: int = 20) -> list[JobSummary]:
        return [JobSummary.of(row) for row in self._jobs.recent(limit=limit)]

    def documents(self, kb: str, *, include_deleted: bool = False) -> list[DocumentInfo]:
        pending = {doc_id for _, doc_id in self._registry.access_pending(kb)}
        return [
            DocumentInfo.of(row, access_pending=row.doc_id in pending)
            for row in self._registry.documents(kb, include_deleted=include_deleted)
        ]

    def show(self, kb: str, doc_id: str) -> DocumentInfo:
        row = self._registry.document(kb, doc_id)
        if row is None:
            raise DocumentNotFound(f"no document {doc_id!r} in knowledge base {kb!r}")
        current = next((v for v in self._registry.versions(kb, doc_id) if v.version == row.current_version), None)
        return DocumentInfo.of(row, current, access_pending=(kb, doc_id) in self._registry.access_pending(kb))

    def history(self, kb: str, doc_id: str) -> list[VersionInfo]:
        if self._registry.document(kb, doc_id) is None:
            raise DocumentNotFound(f"no document {doc_id!r} in knowledge base {kb!r}")
        return [VersionInfo.of(v) for v in self._registry.versions(kb, doc_id)]

    def delete(self, kb: str, doc_id: str) -> bool:
        """Hide the document from queries now; False if it was already deleted.

        Its chunks stay in the store, unseen, until the grace period has passed, and a job worker purges
        them then (`JobWorker.purge_due`): a query that started before the delete still completes."""
        if self._registry.document(kb, doc_id) is None:
            raise DocumentNotFound(f"no document {doc_id!r} in knowledge base {kb!r}")
        return self._registry.mark_deleted(kb, doc_id)

    def original(self, kb: str, doc_id: str, version: int | None = None) -> Original:
        """The file a version (the current one unless given) was made from, as it was ingested.

        DocumentNotFound for a deleted or unknown document or version; FileGone when its bytes are not
        kept and its source file was removed or changed since."""
        row = self._registry.document(kb, doc_id)
        if row is None or row.status == "deleted":
            raise DocumentNotFound(f"no document {doc_id!r} in knowledge base {kb!r}")
        wanted = version or row.current_version
        found = next((v for v in self._registry.versions(kb, doc_id) if v.version == wanted), None)
        if found is None:
            raise DocumentNotFound(f"document {doc_id!r} has no version {wanted}")
        name = Path(found.source).name or Path(doc_id).name
        kept = self._files.find(kb, found.sha256) if self._files is not None else None
        if kept is not None:
            return Original(kept, name, VersionInfo.of(found))
        source = Path(found.source)
        if found.source and source.is_file() and sha256_file(source) == found.sha256:
            return Original(source, name, VersionInfo.of(found))
        raise FileGone(
            f"the file of version {wanted} of {doc_id!r} is no longer available: it was ingested from {name}, "
            "which has been removed or changed since"
        )

    def restore(
        self, kb: str, doc_id: str, version: int, *, uploads_dir: Path, archive_limits: ArchiveLimits = ArchiveLimits()
    ) -> str:
        """Queue a job that ingests the file of `version` again, as the document's newest version (with the
        document's groups and tags as they are now); returns the job id."""
        original = self.original(kb, doc_id, version)
        job_id = self._jobs.new_id()
        target = uploads_dir / job_id / "restore" / original.filename
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            try:
                os.link(original.path, target)
            except OSError:
                shutil.copyfile(original.path, target)
            return self.submit(
                [target], kb=kb, uploads_dir=uploads_dir, doc_id=doc_id, job_id=job_id, archive_limits=archive_limits
            )
        except BaseException:
            shutil.rmtree(uploads_dir / job_id, ignore_errors=True)
            raise


@dataclass(frozen=True)
class Original:
    path: Path
    # The file's name when it was ingested (for a download's name and a restored copy's extension).
    filename: str
    version: VersionInfo
