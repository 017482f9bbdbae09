"""Read-only views of ingestion jobs for people and scripts (`kb jobs show --json`, `kb ingest --wait`).

Plain frozen dataclasses, so that `dataclasses.asdict` gives the JSON document the CLI prints, field by
field in this order; the database rows stay inside ingest.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ingest.jobs import FINISHED_STATES, JobRow, JobView


@dataclass(frozen=True)
class FileCounts:
    total: int
    done: int
    failed: int


@dataclass(frozen=True)
class PageCounts:
    total: int
    done: int


@dataclass(frozen=True)
class JobDocument:
    path: str
    doc_id: str
    status: str
    version: int
    pages: int | None
    chunks: int
    error: str
    error_code: str


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    kb: str
    state: str
    stage: str
    current_file: str
    files: FileCounts
    pages: PageCounts
    chunks_done: int
    timings_ms: dict[str, float]
    error: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    documents: list[JobDocument]

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @classmethod
    def of(cls, view: JobView) -> JobInfo:
        job = view.job
        return cls(
            job_id=job.job_id, kb=job.kb, state=job.state, stage=job.stage, current_file=job.current_file,
            files=FileCounts(job.files_total, job.files_done, job.files_failed),
            pages=PageCounts(job.pages_total, job.pages_done), chunks_done=job.chunks_done,
            timings_ms={k: round(v, 1) for k, v in (job.timings or {}).items()}, error=job.error,
            attempts=job.attempts, created_at=job.created_at, started_at=job.started_at,
            finished_at=job.finished_at,
            documents=[
                JobDocument(i.path, i.doc_id, i.status, i.version, i.pages, i.chunks, i.error, i.error_code)
                for i in view.items
            ],
        )  # fmt: skip


@dataclass(frozen=True)
class JobSummary:
    job_id: str
    kb: str
    state: str
    stage: str
    files: int
    failed: int
    created_at: datetime

    @classmethod
    def of(cls, row: JobRow) -> JobSummary:
        return cls(row.job_id, row.kb, row.state, row.stage, row.files_total, row.files_failed, row.created_at)
