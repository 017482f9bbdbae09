"""DELETE /jobs/{job_id}: cancel an ingestion job (the logic is JobStore.cancel)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from app.access.deps import DocumentWriter
from app.audit.trail import Action, audit_request, note_kb
from app.deps import ContainerDep
from app.errors import NotFound

router = APIRouter(tags=["documents"])

JobId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the id `POST /documents` returned")]


class JobCancelled(BaseModel):
    job_id: str
    state: Literal["cancelled", "cancelling", "done", "failed"] = Field(
        description="cancelled: a queued job, at once; cancelling: its worker stops between files and rolls "
        "back the file under way (files already finished stay published); done or failed: it had finished"
    )


@router.delete("/jobs/{job_id}", response_model=JobCancelled)
async def cancel_job(job_id: JobId, request: Request, container: ContainerDep, caller: DocumentWriter) -> JobCancelled:
    job = container.documents.job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    note_kb(request, job.kb)
    caller.require_kb(job.kb)  # 403, like every other route of a knowledge base not granted
    state = container.documents.cancel_job(job_id)
    if state is None:
        raise NotFound(f"no job {job_id}")
    await audit_request(request, Action.job_cancel, kb=job.kb, target=job_id, detail={"state": state})
    return JobCancelled(job_id=job_id, state=state)
