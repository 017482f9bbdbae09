"""The work queue an ingestion worker needs: the seam where a task engine can replace the embedded one.

The unit of work is a file of a job (a job item), claimed a few at a time under a lease that fences
every write of the worker holding it. `ingest.jobs.JobStore` implements it on the registry's SQL database
(SQLite or PostgreSQL, FOR UPDATE SKIP LOCKED), so kb needs no extra service. Another backend (a
PostgreSQL task engine such as procrastinate, a broker) must keep what the worker relies on: a file is
held by one live claim at a time; a write under a lease that lost its claim raises LostJob; a claim whose
worker is gone can be found and requeued; the job closes exactly once, when its last file finishes.
"""

from __future__ import annotations

from typing import Protocol

from ingest.events import Stage
from ingest.jobs import ItemStatus, JobItemRow, JobView, Requeued
from ingest.registry import Lease


class WorkQueue(Protocol):
    def get(self, job_id: str) -> JobView | None: ...

    def finished(self, job_id: str) -> bool: ...

    def claim(self, worker: str, *, job_id: str | None = None, files: int | None = None) -> Lease | None:
        """The next few unclaimed files of the oldest open job (of `job_id` if given), or None."""

    def claimed_items(self, lease: Lease) -> list[JobItemRow]:
        """The files of the claim still to do, in order."""

    def start_item(self, lease: Lease, ordinal: int, *, path: str) -> bool:
        """A file starts (one more attempt); True when the job is to be cancelled."""

    def progress(
        self, lease: Lease, *, stage: Stage, pages_done: int, pages_total: int, chunks_done: int,
        timings: dict[str, float],
    ) -> bool:  # fmt: skip
        """Progress of the claim's files under way; True when the job is to be cancelled."""

    def finish_item(
        self, lease: Lease, ordinal: int, *, status: ItemStatus, version: int, pages: int | None, chunks: int,
        error: str = "", error_code: str = "", timings: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        """Record a file's result; closes the job when it was its last file."""

    def release(self, lease: Lease) -> str:
        """End the claim (its files not done go back, or are cancelled); the job's state."""

    def heartbeat(self, lease: Lease) -> bool:
        """The claim's worker is alive; True when the job is to be cancelled; LostJob when not held."""

    def abandoned(self) -> list[Lease]:
        """Claims whose worker is gone."""

    def requeue(self, lease: Lease, *, max_attempts: int = 2, error: str = "") -> Requeued | None:
        """Take a claim back from a gone worker; None when someone else did first."""

    def worker_beat(self, worker: str) -> None: ...

    def worker_gone(self, worker: str) -> None: ...
