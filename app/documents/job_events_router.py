"""/jobs: the ingestion jobs of the knowledge bases a key is granted, and their progress as it happens.

`GET /jobs/{id}/events` is a Server-Sent Events stream: a `progress` event with the job (the same JSON as
`GET /jobs/{id}`) whenever it changes, read from the database about twice a second, then one `done`
event when the job has finished (done, failed or cancelled), and the stream ends. A client that goes
away stops the polling.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from functools import partial
from typing import Annotated, Literal

import anyio
from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from app.access.deps import DocumentReader
from app.access.principal import ALL_KBS, Principal
from app.access.roles import Permission
from app.audit.trail import note_kb
from app.container import Container
from app.deps import ContainerDep
from app.documents.library import JobView

router = APIRouter(prefix="/jobs", tags=["jobs"])

POLL_S = 0.5


class JobItem(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    file: str
    doc_id: str
    status: str = Field(description="queued | running | indexed | unchanged | failed")
    version: int
    pages: int | None
    chunks: int
    error: str
    error_code: str


class Job(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    job_id: str
    kb: str
    state: str = Field(description="queued | running | done | failed | cancelled")
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
    items: list[JobItem]


class JobSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

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


class JobPage(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int


def _job(container: Container, caller: Principal, job_id: str) -> JobView:
    return container.library.job(
        job_id, may_use=caller.may_use, access=caller.access, writer=caller.may(Permission.write_documents)
    )


@router.get("", response_model=JobPage)
def list_jobs(
    request: Request, *, container: ContainerDep, caller: DocumentReader,
    kb: Annotated[str | None, Query(max_length=64, description="only this knowledge base's jobs")] = None,
    state: Literal["queued", "running", "done", "failed", "cancelled"] | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> JobPage:  # fmt: skip
    """Jobs newest first, of the knowledge bases the key is granted."""
    if kb is not None:
        note_kb(request, kb)
        caller.require_kb(kb)
        kbs: list[str] | None = [kb]
    else:
        kbs = None if ALL_KBS in caller.kbs else list(caller.kbs)
    items, total = container.library.jobs(kbs=kbs, state=state, limit=limit, offset=offset)
    return JobPage(items=[JobSummary.model_validate(j) for j in items], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=Job)
def show_job(job_id: Annotated[str, Path(max_length=64)], container: ContainerDep, caller: DocumentReader) -> Job:
    """A job and its files (404 for a job of a knowledge base the key is not granted)."""
    return Job.model_validate(_job(container, caller, job_id))


_SSE_DOC = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "`progress` events (the job's JSON) as it changes, then one `done` event.",
    }
}


@router.get("/{job_id}/events", response_class=StreamingResponse, responses=_SSE_DOC)  # type: ignore[arg-type]
async def job_events(
    request: Request, job_id: Annotated[str, Path(max_length=64)], container: ContainerDep, caller: DocumentReader
) -> StreamingResponse:
    """The job's progress as Server-Sent Events, until it has finished."""
    first = Job.model_validate(await to_thread.run_sync(partial(_job, container, caller, job_id)))

    async def events() -> AsyncIterator[str]:
        job, last = first, ""
        while True:
            data = job.model_dump_json()
            if data != last:
                yield f"event: progress\ndata: {data}\n\n"
                last = data
            if job.state in ("done", "failed", "cancelled"):
                yield f"event: done\ndata: {data}\n\n"
                return
            await anyio.sleep(POLL_S)
            if await request.is_disconnected():
                return
            job = Job.model_validate(await to_thread.run_sync(partial(_job, container, caller, job_id)))

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
