"""Persisted ingestion jobs: a queue of files in the SQL database, progress, per-stage timings, crash recovery.

A job is one `kb ingest` request (one or many files, each a job item). Workers claim a job's files a few
at a time (`claim_files`), so any number of workers, in any number of processes and machines, share one
big job. A claim is a row with its own fencing token: PostgreSQL locks the job row for the moment of the
claim and the items it takes (FOR UPDATE, SKIP LOCKED), SQLite runs one write transaction at a time. The
worker heartbeats its claim and writes progress as it goes, every write checked against the claim. A
claim whose worker died (kill -9, power loss) or stalled past the heartbeat timeout is found by its stale
heartbeat or dead PID; it is fenced out (its late writes are refused), the versions it had begun are
rolled back and its files are queued again, while other workers' claims of the same job go on. A file
that keeps killing its worker is failed after `max_attempts` starts. The job's state and totals follow
from its files: whichever write finishes its last file closes it, once, under the job row's lock. A job
can be cancelled: its queued files at once, the files under way between files and batches.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from core.procs import pid_alive
from ingest.events import Stage
from ingest.registry import (
    Base,
    JobClaimRow,
    JobRow,
    Lease,
    LostJob,
    Registry,
    VersionRef,
    as_utc,
    now,
    owned_claim,
    owned_job,
)

__all__ = ["JobClaimRow", "JobItemRow", "JobRow", "JobStore", "Lease"]

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
# A job's `stage` column holds the Stage of the file being worked on, or "queued", "done", "failed".
ItemStatus = Literal["queued", "running", "indexed", "unchanged", "failed", "cancelled"]
FINISHED_STATES = ("done", "failed", "cancelled")
# The most files one claim takes: a worker that dies hands back at most this many.
MAX_CLAIM_FILES = 32
_OPEN = ("queued", "running")
_FINISHED_ITEMS = ("indexed", "unchanged", "failed")


class JobItemRow(Base):
    __tablename__ = "job_items"

    job_id: Mapped[str] = mapped_column(String(64), ForeignKey("jobs.job_id", ondelete="CASCADE"), primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(4096))
    doc_id: Mapped[str] = mapped_column(String(512))
    # queued (claimed or not) → running (its worker started it) → indexed | unchanged | failed | cancelled
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # The claim (JobClaimRow.token) that holds or last held it; 0 while no worker has it.
    claim: Mapped[int] = mapped_column(Integer, default=0)
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
    # Which worker indexed it (host:pid), for audits of who did what.
    worker: Mapped[str] = mapped_column(String(256), default="")


# Open jobs, not being cancelled, with files that no claim holds: what a worker may claim.
_OPEN_WITH_UNCLAIMED_FILES = (
    JobRow.state.in_(_OPEN),
    JobRow.cancel_requested.is_(False),
    select(JobItemRow.ordinal)
    .where(JobItemRow.job_id == JobRow.job_id, JobItemRow.status == "queued", JobItemRow.claim == 0)
    .exists(),
)


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
    """A claim taken back from a worker that died or stalled: the versions it left unfinished (hidden now,
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
    """The embedded work queue (ingest.queue.WorkQueue) on the registry's SQL database."""

    def __init__(self, registry: Registry, *, stale_after_s: float = 60.0, claim_files: int = 4) -> None:
        self._registry = registry
        self._stale = timedelta(seconds=stale_after_s)
        self._claim_files = claim_files

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def create(
        self, kb: str, files: list[JobFile], *, acl_groups: list[str] | None, tags: list[str] | None,
        job_id: str | None = None, then: Callable[[Session, str, int], None] | None = None,
    ) -> str:  # fmt: skip
        """Queue a job of `files`; its id. `then(session, job_id, files_to_do)` runs in the same transaction
        (a task engine defers the job's deliveries there: both are committed, or neither)."""
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
            if then is not None:
                session.flush()
                then(session, job_id, len(files) - len(failed))
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

    def finished(self, job_id: str) -> bool:
        with self._registry.session() as session:
            state = session.scalar(select(JobRow.state).where(JobRow.job_id == job_id))
        return state is None or state in FINISHED_STATES

    def unclaimed(self) -> list[str]:
        """Open jobs, oldest first, with files no claim holds (nothing is working on them now)."""
        with self._registry.session() as session:
            return list(
                session.scalars(select(JobRow.job_id).where(*_OPEN_WITH_UNCLAIMED_FILES).order_by(JobRow.created_at))
            )

    # -- claims -----------------------------------------------------------------------------------
    def claim(self, worker: str, *, job_id: str | None = None, files: int | None = None) -> Lease | None:
        """Claim the next unclaimed files of the oldest job that has some (of `job_id` if given), with a
        new fencing token. Two workers never take the same file: the job row is locked for the moment of
        the claim (PostgreSQL: FOR UPDATE, and the items FOR UPDATE SKIP LOCKED; SQLite: one write
        transaction at a time), and only unclaimed items are taken.

        How many (unless `files` says): guided self-scheduling, a share of what is left per live worker
        (half of it, at most `MAX_CLAIM_FILES`, at least `claim_files`). Claims are big while much is left,
        so that few claims, embedding batches and flushes are paid for, and small at the end, so that
        the workers finish together."""
        pg = self._registry.is_postgres
        with self._registry.session() as session:
            open_jobs = select(JobRow.job_id).where(*_OPEN_WITH_UNCLAIMED_FILES).order_by(JobRow.created_at).limit(5)
            if job_id is not None:
                open_jobs = open_jobs.where(JobRow.job_id == job_id)
            for candidate in session.scalars(open_jobs).all():
                # Locked first, as every other writer of a job's items does (cancel, requeue, finish).
                job = session.get(JobRow, candidate, with_for_update=True, populate_existing=True)
                if job is None or job.state not in _OPEN or job.cancel_requested:
                    continue
                limit = files or self._share(session, candidate)
                query = (
                    select(JobItemRow)
                    .where(JobItemRow.job_id == candidate, JobItemRow.status == "queued", JobItemRow.claim == 0)
                    .order_by(JobItemRow.ordinal)
                    .limit(limit)
                )
                items = list(session.scalars(query.with_for_update(skip_locked=True) if pg else query))
                if not items:
                    continue
                job.token += 1
                if job.state == "queued":
                    job.state, job.stage, job.attempts = "running", "parsing", job.attempts + 1
                    job.started_at = job.started_at or now()
                job.worker, job.heartbeat_at = worker, now()
                for item in items:
                    item.claim = job.token
                session.add(JobClaimRow(job_id=candidate, token=job.token, worker=worker, heartbeat_at=now()))
                return Lease(candidate, job.token)
        return None

    def _share(self, session: Session, job_id: str) -> int:
        left = session.scalar(
            select(func.count())
            .select_from(JobItemRow)
            .where(JobItemRow.job_id == job_id, JobItemRow.status == "queued", JobItemRow.claim == 0)
        )
        since = now() - self._stale
        workers = session.scalar(select(func.count()).select_from(WorkerRow).where(WorkerRow.heartbeat_at >= since))
        share = math.ceil((left or 0) / (2 * max(1, workers or 0)))
        return max(self._claim_files, min(MAX_CLAIM_FILES, share))

    def claimed_items(self, lease: Lease) -> list[JobItemRow]:
        """The files of a claim still to do, in order."""
        with self._registry.session() as session:
            return list(
                session.scalars(
                    select(JobItemRow)
                    .where(
                        JobItemRow.job_id == lease.job_id,
                        JobItemRow.claim == lease.token,
                        JobItemRow.status.in_(_OPEN),
                    )
                    .order_by(JobItemRow.ordinal)
                )
            )

    def start_item(self, lease: Lease, ordinal: int, *, path: str) -> bool:
        """Record that a file starts (one more attempt at it); True when the job is to be cancelled."""
        with self._registry.session() as session:
            job = owned_job(session, lease)
            item = self._held(session, lease, ordinal)
            item.status, item.attempts = "running", item.attempts + 1
            job.current_file, job.stage, job.heartbeat_at = path, "parsing", now()
            return job.cancel_requested

    def progress(
        self, lease: Lease, *, stage: Stage, pages_done: int, pages_total: int, chunks_done: int,
        timings: dict[str, float],
    ) -> bool:  # fmt: skip
        """Progress of the claim's files under way; the job's totals add every claim's to what its finished
        files did. True when the job is to be cancelled."""
        with self._registry.session() as session:
            claim = owned_claim(session, lease)
            claim.pages_done, claim.pages_total, claim.chunks_done = pages_done, pages_total, chunks_done
            claim.timings, claim.heartbeat_at = timings, now()
            job = owned_job(session, lease)
            job.stage, job.heartbeat_at = stage, now()
            session.flush()
            self._total(session, job)
            return job.cancel_requested

    def finish_item(
        self, lease: Lease, ordinal: int, *, status: ItemStatus, version: int, pages: int | None, chunks: int,
        error: str = "", error_code: str = "", timings: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        with self._registry.session() as session:
            job = owned_job(session, lease)
            item = self._held(session, lease, ordinal)
            if item.status not in _OPEN:
                return  # recorded already (a pass that broke off was retried)
            # The claim's last progress report counted this file as under way; it counts as finished now,
            # and the claim's next report covers the files still under way.
            self._clear_progress(owned_claim(session, lease))
            item.status, item.version, item.pages, item.chunks = status, version, pages, chunks
            item.error, item.error_code, item.timings = error[:4000], error_code, timings or {}
            item.worker = self._claim_worker(session, lease)
            job.files_done += 1
            job.files_failed += status == "failed"
            job.heartbeat_at = now()
            session.flush()
            self._total(session, job)
            self._close_if_done(session, job)

    def release(self, lease: Lease) -> str:
        """The worker is through with its claim: files it did not get to are cancelled when the job is to
        be, else handed back to the queue. Closes the job if nothing is left of it; the job's state."""
        with self._registry.session() as session:
            if self._closed_with(session, lease):
                return str(session.scalar(select(JobRow.state).where(JobRow.job_id == lease.job_id)))
            claim = owned_claim(session, lease)
            job = session.get(JobRow, lease.job_id, with_for_update=True)
            assert job is not None
            claim.state = "released"
            self._clear_progress(claim)
            for item in self._of_claim(session, lease):
                if job.cancel_requested:
                    item.status, item.error, item.error_code = "cancelled", "the job was cancelled", "cancelled"
                else:
                    item.status, item.claim = "queued", 0
            session.flush()
            self._total(session, job)
            self._close_if_done(session, job)
            return job.state

    def heartbeat(self, lease: Lease) -> bool:
        """Say the claim's worker is alive; True when the job is to be cancelled, LostJob when the claim is
        not ours any more."""
        with self._registry.session() as session:
            if self._closed_with(session, lease):
                return False  # its last file closed the job: nothing is lost
            claim = owned_claim(session, lease)
            claim.heartbeat_at = now()
            return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.job_id == lease.job_id)))

    def abandoned(self) -> list[Lease]:
        """Active claims whose worker is gone (a dead PID on this host, or no heartbeat for a while), each
        as the lease its worker held."""
        with self._registry.session() as session:
            active = session.scalars(select(JobClaimRow).where(JobClaimRow.state == "active")).all()
        return [Lease(c.job_id, c.token) for c in active if self._gone(c.worker, c.heartbeat_at)]

    def requeue(self, lease: Lease, *, max_attempts: int = 2, error: str = "") -> Requeued | None:
        """Take a claim back from the worker that held it with `lease` (it died or stalled): the claim is
        marked lost (that worker's late writes are refused), the versions it had begun are retired, and its
        files are queued again; other workers' claims of the job go on. A file that was running has crashed
        its worker once more: after `max_attempts` starts it is failed (`worker_crashed`) instead. None when
        the claim was no longer held (someone else requeued it first)."""
        with self._registry.session() as session:
            try:
                claim = owned_claim(session, lease)
            except LostJob:
                return None
            job = session.get(JobRow, lease.job_id, with_for_update=True)
            assert job is not None
            claim.state = "lost"
            self._clear_progress(claim)
            message = error or "interrupted: the worker stopped mid-file; retried"
            interrupted = self._registry.interrupt_job(session, job.job_id, lease.token, error=message)
            crashed: list[str] = []
            for item in self._of_claim(session, lease):
                if item.status == "running" and item.attempts >= max_attempts:
                    item.status, item.error_code = "failed", "worker_crashed"
                    item.error = f"the worker stopped while indexing this file, {item.attempts} times: given up"
                    job.files_done += 1
                    job.files_failed += 1
                    crashed.append(item.doc_id)
                elif job.cancel_requested:
                    item.status, item.error, item.error_code = "cancelled", "the job was cancelled", "cancelled"
                else:
                    item.status, item.claim = "queued", 0
            session.flush()
            self._total(session, job)
            if not self._close_if_done(session, job) and not self._active_claims(session, job.job_id):
                job.state, job.stage, job.worker, job.current_file = "queued", "queued", "", ""
            return Requeued(job.job_id, job.kb, interrupted, crashed)

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: its unclaimed files at once, the ones workers hold when they next look (between
        files and batches; each rolls back the file under way). Its state now ("cancelling" while workers
        still hold some of it); None for an unknown job. A finished job stays as it is."""
        with self._registry.session() as session:
            job = session.get(JobRow, job_id, with_for_update=True)
            if job is None:
                return None
            if job.state in FINISHED_STATES:
                return job.state
            job.cancel_requested = True
            unclaimed = session.scalars(
                select(JobItemRow).where(
                    JobItemRow.job_id == job_id, JobItemRow.status == "queued", JobItemRow.claim == 0
                )
            ).all()
            for item in unclaimed:
                item.status, item.error, item.error_code = "cancelled", "the job was cancelled", "cancelled"
            session.flush()
            if self._active_claims(session, job_id):
                return "cancelling"
            self._close_if_done(session, job)
            return job.state

    # -- the job's state and totals, from its files ------------------------------------------------
    @staticmethod
    def _held(session: Session, lease: Lease, ordinal: int) -> JobItemRow:
        item = session.get(JobItemRow, (lease.job_id, ordinal), with_for_update=True)
        if item is None or item.claim != lease.token:
            raise LostJob(f"job {lease.job_id}: file {ordinal} is not held by claim {lease.token}")
        return item

    @staticmethod
    def _clear_progress(claim: JobClaimRow) -> None:
        claim.pages_done = claim.pages_total = claim.chunks_done = 0
        claim.timings = {}

    @staticmethod
    def _closed_with(session: Session, lease: Lease) -> bool:
        """Whether the job was closed while this claim held files of it (the claim was released with it)."""
        state = session.scalar(
            select(JobClaimRow.state).where(JobClaimRow.job_id == lease.job_id, JobClaimRow.token == lease.token)
        )
        return state == "released"

    @staticmethod
    def _claim_worker(session: Session, lease: Lease) -> str:
        return (
            session.scalar(
                select(JobClaimRow.worker).where(JobClaimRow.job_id == lease.job_id, JobClaimRow.token == lease.token)
            )
            or ""
        )

    @staticmethod
    def _of_claim(session: Session, lease: Lease) -> list[JobItemRow]:
        return list(
            session.scalars(
                select(JobItemRow).where(
                    JobItemRow.job_id == lease.job_id, JobItemRow.claim == lease.token, JobItemRow.status.in_(_OPEN)
                )
            )
        )

    @staticmethod
    def _active_claims(session: Session, job_id: str) -> int:
        return int(
            session.scalar(
                select(func.count())
                .select_from(JobClaimRow)
                .where(JobClaimRow.job_id == job_id, JobClaimRow.state == "active")
            )
            or 0
        )

    @staticmethod
    def _close_if_done(session: Session, job: JobRow) -> bool:
        """Close the job when none of its files is queued or running (the caller holds the job row's lock,
        so exactly one writer closes it): done, failed when every file failed, cancelled when asked to be
        before its last file finished. True when it is closed."""
        if job.state in FINISHED_STATES:
            return True
        left = session.scalar(
            select(func.count())
            .select_from(JobItemRow)
            .where(JobItemRow.job_id == job.job_id, JobItemRow.status.in_(_OPEN))
        )
        if left:
            return False
        session.execute(
            update(JobClaimRow)
            .where(JobClaimRow.job_id == job.job_id, JobClaimRow.state == "active")
            .values(state="released", pages_done=0, pages_total=0, chunks_done=0, timings={})
            .execution_options(synchronize_session="fetch")
        )
        session.flush()
        JobStore._total(session, job)
        if job.cancel_requested and job.files_done < job.files_total:
            job.state = job.stage = "cancelled"
            done = f" after {job.files_done} of {job.files_total} files" if job.files_done else ""
            job.error = "cancelled" + done
        else:
            ok = job.files_total == 0 or job.files_failed < job.files_total
            job.state = job.stage = "done" if ok else "failed"
            if job.files_failed:
                job.error = f"{job.files_failed} of {job.files_total} files failed"
        job.current_file, job.finished_at = "", now()
        return True

    @staticmethod
    def _total(session: Session, job: JobRow) -> None:
        """The job's progress: its finished files, and what the active claims report of the files under way."""
        pages = chunks = under_pages = under_total = under_chunks = 0
        timings: dict[str, float] = {}
        items = session.scalars(
            select(JobItemRow).where(JobItemRow.job_id == job.job_id, JobItemRow.status.in_(_FINISHED_ITEMS))
        )
        for item in items:
            pages += item.pages or 0
            chunks += item.chunks
            for key, ms in (item.timings or {}).items():
                timings[key] = timings.get(key, 0.0) + ms
        claims = session.scalars(
            select(JobClaimRow).where(JobClaimRow.job_id == job.job_id, JobClaimRow.state == "active")
        )
        for claim in claims:
            under_pages += claim.pages_done
            under_total += claim.pages_total
            under_chunks += claim.chunks_done
            for key, ms in (claim.timings or {}).items():
                timings[key] = timings.get(key, 0.0) + ms
        job.pages_done, job.pages_total = pages + under_pages, pages + under_total
        job.chunks_done, job.timings = chunks + under_chunks, timings

    def _gone(self, worker: str, heartbeat_at: datetime | None) -> bool:
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            return True
        return heartbeat_at is None or now() - as_utc(heartbeat_at) > self._stale

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


class WorkerRow(Base):
    __tablename__ = "workers"

    worker: Mapped[str] = mapped_column(String(256), primary_key=True)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
