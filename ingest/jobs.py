"""Persisted ingestion jobs: a queue in the SQL database, progress, per-stage timings, crash recovery.

A job is one `kb ingest` request (one or many files). A worker claims a queued job (FOR UPDATE SKIP
LOCKED on PostgreSQL, a conditional UPDATE in SQLite's single-writer transaction) and gets a fencing
token; it records a heartbeat while it works and writes progress as it goes, every write checked
against the token. A job whose worker died (kill -9, power loss) or stalled past the heartbeat timeout
is found by its stale heartbeat or dead PID; it gets a new token (the old worker's late writes are
refused), its half-indexed versions are rolled back and it is queued again, resuming after the files
it had finished. A file that keeps killing its worker is failed after `max_attempts` starts. A job can
be cancelled: a queued one at once, a running one between files and batches.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.procs import pid_alive
from ingest.events import Stage
from ingest.registry import Base, JobRow, Lease, LostJob, Registry, VersionRef, as_utc, now, owned_job

__all__ = ["JobItemRow", "JobRow", "JobStore", "Lease"]

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
# A job's `stage` column holds the Stage of the file being worked on, or "queued", "done", "failed".
ItemStatus = Literal["queued", "running", "indexed", "unchanged", "failed", "cancelled"]
FINISHED_STATES = ("done", "failed", "cancelled")


class JobItemRow(Base):
    __tablename__ = "job_items"

    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(4096))
    doc_id: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    version: Mapped[int] = mapped_column(Integer, default=0)
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    error_code: Mapped[str] = mapped_column(String(64), default="")
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # How many times a worker started this file; one that was running when its worker died counts as a
    # crash, and a file that crashed its worker `max_attempts` times is failed (`worker_crashed`).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[str] = mapped_column(String(4096), default="")
    # The caller named the document id: replace whatever holds it.
    replace: Mapped[bool] = mapped_column(Boolean, default=False)


@dataclass(frozen=True)
class JobFile:
    path: str
    doc_id: str
    # A file rejected before the job starts (unsafe name, unreadable archive member) is recorded as failed.
    error: str = ""
    error_code: str = ""
    origin: str = ""
    replace: bool = False


@dataclass(frozen=True)
class Requeued:
    """A job taken back from a worker that died or stalled: the versions it left unfinished (hidden now,
    chunks still to delete) and the files failed for crashing their worker too often."""

    job_id: str
    kb: str
    interrupted: list[VersionRef]
    crashed: list[str]


@dataclass
class JobView:
    job: JobRow
    items: list[JobItemRow] = field(default_factory=list)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class JobStore:
    def __init__(self, registry: Registry, *, stale_after_s: float = 60.0) -> None:
        self._registry = registry
        self._stale = timedelta(seconds=stale_after_s)

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def create(
        self, kb: str, files: list[JobFile], *, acl_groups: list[str] | None, tags: list[str] | None,
        job_id: str | None = None,
    ) -> str:  # fmt: skip
        job_id = job_id or self.new_id()
        with self._registry.session() as session:
            failed = [f for f in files if f.error]
            session.add(
                JobRow(
                    job_id=job_id, kb=kb, acl_groups=acl_groups, tags=tags, files_total=len(files),
                    files_done=len(failed), files_failed=len(failed),
                )
            )  # fmt: skip
            session.flush()
            for i, f in enumerate(files):
                status = "failed" if f.error else "queued"
                session.add(
                    JobItemRow(job_id=job_id, ordinal=i, path=f.path, doc_id=f.doc_id, status=status,
                               error=f.error, error_code=f.error_code, origin=f.origin, replace=f.replace)
                )  # fmt: skip
        return job_id

    def get(self, job_id: str) -> JobView | None:
        with self._registry.session() as session:
            job = session.get(JobRow, job_id)
            if job is None:
                return None
            items = list(
                session.scalars(select(JobItemRow).where(JobItemRow.job_id == job_id).order_by(JobItemRow.ordinal))
            )
            return JobView(job=job, items=items)

    def recent(self, *, limit: int = 20) -> list[JobRow]:
        with self._registry.session() as session:
            return list(session.scalars(select(JobRow).order_by(JobRow.created_at.desc()).limit(limit)))

    def claim(self, worker: str) -> Lease | None:
        """Take the oldest queued job, with a new fencing token. Two workers never take the same one:
        PostgreSQL locks the row it picks and skips rows others hold (FOR UPDATE SKIP LOCKED); SQLite runs
        one write transaction at a time, and the UPDATE is conditional anyway."""
        with self._registry.session() as session:
            query = select(JobRow.job_id).where(JobRow.state == "queued").order_by(JobRow.created_at)
            # PostgreSQL: lock the row taken, skip the rows other workers are taking.
            pg = self._registry.is_postgres
            query = query.limit(1).with_for_update(skip_locked=True) if pg else query.limit(5)
            for job_id in session.scalars(query).all():
                taken = session.execute(
                    update(JobRow)
                    .where(JobRow.job_id == job_id, JobRow.state == "queued")
                    .values(state="running", worker=worker, heartbeat_at=now(), started_at=now(),
                            attempts=JobRow.attempts + 1, token=JobRow.token + 1, cancel_requested=False)
                    .execution_options(synchronize_session=False)
                )  # fmt: skip
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    token = session.scalar(select(JobRow.token).where(JobRow.job_id == job_id))
                    return Lease(str(job_id), int(token or 0))
        return None

    def pending_items(self, job_id: str) -> list[JobItemRow]:
        with self._registry.session() as session:
            return list(
                session.scalars(
                    select(JobItemRow)
                    .where(JobItemRow.job_id == job_id, JobItemRow.status.in_(("queued", "running")))
                    .order_by(JobItemRow.ordinal)
                )
            )

    def start_item(self, lease: Lease, ordinal: int, *, path: str) -> bool:
        """Record that a file starts (one more attempt at it); True when the job is to be cancelled."""
        with self._registry.session() as session:
            job = owned_job(session, lease)
            item = session.get(JobItemRow, (lease.job_id, ordinal))
            assert item is not None
            item.status, item.attempts = "running", item.attempts + 1
            job.current_file, job.stage, job.heartbeat_at = path, "parsing", now()
            return job.cancel_requested

    def progress(
        self, lease: Lease, *, stage: Stage, pages_done: int, pages_total: int, chunks_done: int,
        timings: dict[str, float],
    ) -> bool:  # fmt: skip
        """Progress of the files under way, added to what the job's finished files already did; True
        when the job is to be cancelled."""
        with self._registry.session() as session:
            job = owned_job(session, lease)
            base = self._finished_totals(session, lease.job_id)
            job.stage = stage
            job.pages_done = base.pages + pages_done
            job.pages_total = base.pages + pages_total
            job.chunks_done = base.chunks + chunks_done
            merged = dict(base.timings)
            for key, ms in timings.items():
                merged[key] = merged.get(key, 0.0) + ms
            job.timings = merged
            job.heartbeat_at = now()
            return job.cancel_requested

    def finish_item(
        self, lease: Lease, ordinal: int, *, status: ItemStatus, version: int, pages: int | None, chunks: int,
        error: str = "", error_code: str = "", timings: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        with self._registry.session() as session:
            job = owned_job(session, lease)
            item = session.get(JobItemRow, (lease.job_id, ordinal))
            assert item is not None
            if item.status not in ("queued", "running"):
                return  # recorded already (a pass that broke off was retried)
            item.status, item.version, item.pages, item.chunks = status, version, pages, chunks
            item.error, item.error_code, item.timings = error[:4000], error_code, timings or {}
            job.files_done += 1
            job.files_failed += status == "failed"
            session.flush()
            base = self._finished_totals(session, lease.job_id)
            job.pages_done = job.pages_total = base.pages
            job.chunks_done = base.chunks
            job.timings = base.timings
            job.heartbeat_at = now()

    def finish(self, lease: Lease) -> str:
        """Close the job: done, or failed when every file failed, or cancelled when asked to be; its state."""
        with self._registry.session() as session:
            job = owned_job(session, lease)
            if job.cancel_requested and job.files_done < job.files_total:
                self._cancel_rest(session, job)
            else:
                ok = job.files_total == 0 or job.files_failed < job.files_total
                job.state = job.stage = "done" if ok else "failed"
                job.current_file, job.finished_at = "", now()
                if job.files_failed:
                    job.error = f"{job.files_failed} of {job.files_total} files failed"
            return job.state

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: a queued one at once, a running one when its worker next looks (between files and
        batches; it rolls back the file under way). Its state now ("cancelling" while a worker still runs
        it); None for an unknown job. A finished job stays as it is."""
        with self._registry.session() as session:
            job = session.get(JobRow, job_id, with_for_update=True)
            if job is None:
                return None
            if job.state == "queued":
                self._cancel_rest(session, job)
                job.token += 1  # a worker that claimed it meanwhile may not write under it
            elif job.state == "running":
                job.cancel_requested = True
                return "cancelling"
            return job.state

    @staticmethod
    def _cancel_rest(session: Session, job: JobRow) -> None:
        rest = session.scalars(
            select(JobItemRow).where(JobItemRow.job_id == job.job_id, JobItemRow.status.in_(("queued", "running")))
        ).all()
        for item in rest:
            item.status, item.error, item.error_code = "cancelled", "the job was cancelled", "cancelled"
        job.state = job.stage = "cancelled"
        job.current_file, job.finished_at = "", now()
        job.error = "cancelled" + (f" after {job.files_done} of {job.files_total} files" if job.files_done else "")

    def heartbeat(self, lease: Lease) -> bool:
        """Say the worker is alive; True when the job is to be cancelled, LostJob when it is not ours."""
        with self._registry.session() as session:
            job = owned_job(session, lease)
            job.heartbeat_at = now()
            return job.cancel_requested

    def abandoned(self) -> list[Lease]:
        """Running jobs whose worker is gone (a dead PID on this host, or no heartbeat for a while), each
        with the token its worker held."""
        with self._registry.session() as session:
            running = session.scalars(select(JobRow).where(JobRow.state == "running")).all()
        return [Lease(job.job_id, job.token) for job in running if self._gone(job.worker, job.heartbeat_at)]

    def _gone(self, worker: str, heartbeat_at: datetime | None) -> bool:
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            return True
        return heartbeat_at is None or now() - as_utc(heartbeat_at) > self._stale

    def requeue(self, lease: Lease, *, max_attempts: int = 2, error: str = "") -> Requeued | None:
        """Take a job back from the worker that held it with `lease` (it died or stalled): a new token
        fences that worker out, the versions it had begun are retired, and the job is queued again, to
        resume after its finished files. A file that was running has crashed its worker once more: after
        `max_attempts` starts it is failed (`worker_crashed`) instead of being retried. None when the job
        was no longer held with that lease (someone else requeued it first)."""
        with self._registry.session() as session:
            try:
                job = owned_job(session, lease)
            except LostJob:
                return None
            message = error or "interrupted: the worker stopped mid-file; retried"
            interrupted = self._registry.interrupt_job(session, job.job_id, lease.token, error=message)
            crashed: list[str] = []
            running = session.scalars(
                select(JobItemRow).where(JobItemRow.job_id == job.job_id, JobItemRow.status == "running")
            ).all()
            for item in running:
                if item.attempts >= max_attempts:
                    item.status, item.error_code = "failed", "worker_crashed"
                    item.error = f"the worker stopped while indexing this file, {item.attempts} times: given up"
                    job.files_done += 1
                    job.files_failed += 1
                    crashed.append(item.doc_id)
                else:
                    item.status = "queued"
            job.token += 1
            if job.cancel_requested:
                self._cancel_rest(session, job)
            else:
                job.state, job.stage, job.worker = "queued", "queued", ""
            return Requeued(job.job_id, job.kb, interrupted, crashed)

    # -- workers ----------------------------------------------------------------------------------
    def worker_beat(self, worker: str) -> None:
        with self._registry.session() as session:
            row = session.get(WorkerRow, worker)
            if row is None:
                session.add(WorkerRow(worker=worker, heartbeat_at=now()))
            else:
                row.heartbeat_at = now()

    def worker_gone(self, worker: str) -> None:
        with self._registry.session() as session:
            row = session.get(WorkerRow, worker)
            if row is not None:
                session.delete(row)

    def live_workers(self) -> list[str]:
        """Workers that heartbeated recently and, when on this host, whose process still exists."""
        with self._registry.session() as session:
            rows = session.scalars(select(WorkerRow)).all()
        return [row.worker for row in rows if not self._gone(row.worker, row.heartbeat_at)]

    @staticmethod
    def _finished_totals(session: Session, job_id: str) -> _Totals:
        totals = _Totals()
        items = session.scalars(
            select(JobItemRow).where(
                JobItemRow.job_id == job_id, JobItemRow.status.in_(("indexed", "unchanged", "failed"))
            )
        )
        for item in items:
            totals.pages += item.pages or 0
            totals.chunks += item.chunks
            for key, ms in (item.timings or {}).items():
                totals.timings[key] = totals.timings.get(key, 0.0) + ms
        return totals

    # -- reads for the jobs API --------------------------------------------------------------------
    def page(
        self, *, kbs: list[str] | None, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[JobRow], int]:
        """Jobs newest first, of the knowledge bases `kbs` (None: all) and in `state` if given; with the
        number that match."""
        query = select(JobRow)
        if kbs is not None:
            query = query.where(JobRow.kb.in_(kbs))
        if state is not None:
            query = query.where(JobRow.state == state)
        with self._registry.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = list(session.scalars(query.order_by(JobRow.created_at.desc()).limit(limit).offset(offset)))
        return rows, int(total)


@dataclass
class _Totals:
    pages: int = 0
    chunks: int = 0
    timings: dict[str, float] = field(default_factory=dict)


class WorkerRow(Base):
    __tablename__ = "workers"

    worker: Mapped[str] = mapped_column(String(256), primary_key=True)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
