"""Persisted ingestion jobs: a queue in the SQL database, progress, per-stage timings, crash recovery.

A job is one `kb ingest` request (one or many files). A worker claims a queued job with a conditional
UPDATE (safe with several workers on SQLite or PostgreSQL), records a heartbeat while it works, and
writes progress as it goes. A job whose worker died (kill -9, power loss) is found by its stale
heartbeat or dead PID; its half-indexed version is rolled back and the job is queued again, resuming
after the files it had finished.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.procs import pid_alive
from ingest.events import Stage
from ingest.registry import Base, Registry, as_utc, now

JobState = Literal["queued", "running", "done", "failed"]
# A job's `stage` column holds the Stage of the file being worked on, or "queued", "done", "failed".
ItemStatus = Literal["queued", "running", "indexed", "unchanged", "failed"]


class JobRow(Base):
    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kb: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str] = mapped_column(String(16), default="queued")
    current_file: Mapped[str] = mapped_column(String(2048), default="")
    # None (JSON null): not given, so each document keeps its own, or a new one gets its kb's defaults;
    # a list, even an empty one, replaces them. Stored as JSON null, so a column made NOT NULL by an older
    # kb still takes it.
    acl_groups: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    tags: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    pages_total: Mapped[int] = mapped_column(Integer, default=0)
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


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


@dataclass(frozen=True)
class JobFile:
    path: str
    doc_id: str
    # A file rejected before the job starts (unsafe name, unreadable archive member) is recorded as failed.
    error: str = ""
    error_code: str = ""


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
                               error=f.error, error_code=f.error_code)
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

    def claim(self, worker: str) -> str | None:
        """Take the oldest queued job; the conditional UPDATE makes two workers never take the same one."""
        with self._registry.session() as session:
            candidates = session.scalars(
                select(JobRow.job_id).where(JobRow.state == "queued").order_by(JobRow.created_at).limit(5)
            ).all()
            for job_id in candidates:
                taken = session.execute(
                    update(JobRow)
                    .where(JobRow.job_id == job_id, JobRow.state == "queued")
                    .values(state="running", worker=worker, heartbeat_at=now(), started_at=now(),
                            attempts=JobRow.attempts + 1)
                )  # fmt: skip
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    return str(job_id)
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

    def start_item(self, job_id: str, ordinal: int, *, path: str) -> None:
        with self._registry.session() as session:
            item = session.get(JobItemRow, (job_id, ordinal))
            job = session.get(JobRow, job_id)
            assert item is not None and job is not None
            item.status = "running"
            job.current_file, job.stage, job.heartbeat_at = path, "parsing", now()

    def progress(
        self, job_id: str, *, stage: Stage, pages_done: int, pages_total: int, chunks_done: int,
        timings: dict[str, float],
    ) -> None:  # fmt: skip
        """Progress of the files under way, added to what the job's finished files already did."""
        with self._registry.session() as session:
            job = session.get(JobRow, job_id)
            assert job is not None
            base = self._finished_totals(session, job_id)
            job.stage = stage
            job.pages_done = base.pages + pages_done
            job.pages_total = base.pages + pages_total
            job.chunks_done = base.chunks + chunks_done
            merged = dict(base.timings)
            for key, ms in timings.items():
                merged[key] = merged.get(key, 0.0) + ms
            job.timings = merged
            job.heartbeat_at = now()

    def finish_item(
        self, job_id: str, ordinal: int, *, status: ItemStatus, version: int, pages: int | None, chunks: int,
        error: str = "", error_code: str = "", timings: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        with self._registry.session() as session:
            item = session.get(JobItemRow, (job_id, ordinal))
            job = session.get(JobRow, job_id)
            assert item is not None and job is not None
            item.status, item.version, item.pages, item.chunks = status, version, pages, chunks
            item.error, item.error_code, item.timings = error[:4000], error_code, timings or {}
            job.files_done += 1
            job.files_failed += status == "failed"
            session.flush()
            base = self._finished_totals(session, job_id)
            job.pages_done = job.pages_total = base.pages
            job.chunks_done = base.chunks
            job.timings = base.timings
            job.heartbeat_at = now()

    def finish(self, job_id: str) -> None:
        with self._registry.session() as session:
            job = session.get(JobRow, job_id)
            assert job is not None
            ok = job.files_total == 0 or job.files_failed < job.files_total
            job.state = job.stage = "done" if ok else "failed"
            job.current_file, job.finished_at = "", now()
            if job.files_failed:
                job.error = f"{job.files_failed} of {job.files_total} files failed"

    def heartbeat(self, job_id: str) -> None:
        with self._registry.session() as session:
            session.execute(update(JobRow).where(JobRow.job_id == job_id).values(heartbeat_at=now()))

    def abandoned(self) -> list[str]:
        """Running jobs whose worker is gone: a dead PID on this host, or no heartbeat for a while."""
        with self._registry.session() as session:
            running = session.scalars(select(JobRow).where(JobRow.state == "running")).all()
        return [job.job_id for job in running if self._gone(job.worker, job.heartbeat_at)]

    def _gone(self, worker: str, heartbeat_at: datetime | None) -> bool:
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            return True
        return heartbeat_at is None or now() - as_utc(heartbeat_at) > self._stale

    def requeue(self, job_id: str) -> None:
        with self._registry.session() as session:
            session.execute(
                update(JobItemRow)
                .where(JobItemRow.job_id == job_id, JobItemRow.status == "running")
                .values(status="queued")
            )
            session.execute(
                update(JobRow).where(JobRow.job_id == job_id).values(state="queued", stage="queued", worker="")
            )

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
