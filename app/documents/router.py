"""/documents: upload, list, show, download, replace, restore, regroup and delete documents.

The logic is in app/documents/library.py (what a caller may see and change) and app/documents/uploads.py (the streamed
multipart body); here: permissions, knowledge-base grants, audit rows and the wire format.

Document ids may contain "/" (`teamA/policy.md`), so the routes with a suffix (`/versions`, `/file`,
`/versions/{n}/restore`) are declared before the bare `/documents/{doc_id}`: a document whose own id
ends in "/versions" or "/file" is reached through the listing, not by those paths.
"""

from __future__ import annotations

import mimetypes
import re
from datetime import datetime
from functools import partial
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import quote

import magic
from anyio import to_thread
from fastapi import APIRouter, Path, Query, Request, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.access.deps import DocumentReader, DocumentWriter
from app.audit.trail import Action, Actor, audit_request, note_kb
from app.deps import ContainerDep
from app.documents.library import Accepted, DocumentFilter, DocumentView
from app.documents.uploads import UploadLimits, receive_upload
from app.errors import InvalidRequest
from app.ops.durations import parse_moment
from app.settings import Settings
from core.names import GROUP_NAME_PATTERN, TAG_PATTERN
from ingest.documents import Original

router = APIRouter(prefix="/documents", tags=["documents"])

Kb = Annotated[str, Query(max_length=64, description="the knowledge base (1-64 letters, digits or underscores)")]
DocId = Annotated[str, Path(description="the document id, e.g. teamA/policy.md", max_length=512)]
Group = Annotated[str, Field(pattern=GROUP_NAME_PATTERN)]
Tag = Annotated[str, Field(pattern=TAG_PATTERN)]


class Document(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    doc_id: str
    kb: str
    title: str
    version: int = Field(description="the version readers see (0: none published yet)")
    status: str = Field(description="pending | ready | failed")
    chunks: int
    pages: int | None
    groups: list[str]
    tags: list[str]
    created_at: datetime
    updated_at: datetime
    access_pending: bool = Field(description="a change of its groups or tags is under way: hidden from searches")


class DocumentPage(BaseModel):
    items: list[Document]
    total: int
    limit: int
    offset: int


class Version(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    status: str = Field(description="indexing | ready | replaced | deleted | failed | interrupted")
    sha256: str
    size_bytes: int
    pages: int | None
    chunks: int
    error: str
    error_code: str
    created_at: datetime
    published_at: datetime | None


class VersionList(BaseModel):
    items: list[Version]


class UploadItem(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    file: str = Field(description="the file's name in the upload (or path inside an uploaded zip)")
    doc_id: str
    status: str = Field(description="queued | running | indexed | unchanged | failed")


class UploadAccepted(BaseModel):
    job_id: str = Field(description="follow it at /jobs/{job_id} or /jobs/{job_id}/events")
    kb: str
    items: list[UploadItem]

    @classmethod
    def of(cls, accepted: Accepted) -> UploadAccepted:
        return cls(job_id=accepted.job_id, kb=accepted.kb, items=[UploadItem.model_validate(i) for i in accepted.items])


class AccessUpdate(BaseModel):
    groups: list[Group] | None = Field(
        None, max_length=256, description="replaces the groups (empty: readable by admins only)"
    )
    tags: list[Tag] | None = Field(None, max_length=256, description="replaces the tags")


class Deleted(BaseModel):
    doc_id: str
    kb: str
    deleted: bool


class ListParams(BaseModel):
    kb: str = Field("default", max_length=64)
    status: Literal["pending", "ready", "failed"] | None = None
    tag: str | None = Field(None, max_length=128)
    group: str | None = Field(None, max_length=128)
    q: str | None = Field(None, max_length=512, description="a part of the document id or title (any case)")
    updated_since: datetime | None = Field(None, description="an ISO time (UTC unless it says) or a duration: 7d")
    limit: int = Field(50, ge=1, le=500)
    offset: int = Field(0, ge=0, le=1_000_000_000)

    @field_validator("updated_since", mode="before")
    @classmethod
    def _moment(cls, value: object) -> object:
        return parse_moment(value) if isinstance(value, str) else value


_FORM_FIELDS = {
    "kb": {"type": "string", "default": "default", "description": "the knowledge base"},
    "groups": {
        "type": "string",
        "description": "comma-separated groups; absent: each document keeps its own (a new one gets its "
        "knowledge base's default groups); present but empty: no groups (admins only)",
    },
    "tags": {"type": "string", "description": "comma-separated tags; absent: kept; present but empty: none"},
}


def _multipart(files: dict[str, object], extra: dict[str, object], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": {**files, **extra}, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


_UPLOAD_BODY = _multipart(
    {"files": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "one or many; "
               "a .zip is unpacked; a file's name (a relative path is kept) becomes its document id"}},
    {**_FORM_FIELDS, "doc_id": {"type": "string", "description": "the document id, for a single file only"}},
    ["files"],
)  # fmt: skip
_REPLACE_BODY = _multipart(
    {"file": {"type": "string", "format": "binary", "description": "the new version's file"}},
    {k: v for k, v in _FORM_FIELDS.items() if k != "kb"},
    ["file"],
)
_FILE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The file as it was uploaded or ingested, with its own content type.",
    }
}


def upload_limits(settings: Settings) -> UploadLimits:
    limits = settings.limits
    return UploadLimits(max_file_bytes=limits.max_upload_mb * 1024 * 1024, max_files=limits.max_upload_files)


def _labels(value: str | None) -> list[str] | None:
    """A comma-separated form field: None when absent (keep), else the list (empty: none)."""
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


# -- upload -------------------------------------------------------------------------------------------
@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=UploadAccepted, openapi_extra=_UPLOAD_BODY)
async def upload(request: Request, container: ContainerDep, caller: DocumentWriter) -> UploadAccepted:
    """Upload one or many files (multipart field `files`) into a knowledge base; they are indexed by a job."""
    job_id = container.jobs.new_id()
    received = await receive_upload(request, container.uploads_dir / job_id, upload_limits(container.settings))
    try:
        if stray := sorted({f.field for f in received.files} - {"files"}):
            raise InvalidRequest(f"files go in the multipart field 'files', not {', '.join(map(repr, stray))}")
        kb = received.field("kb") or "default"
        note_kb(request, kb)
        caller.require_kb(kb)
        work = partial(
            container.library.upload, caller.access, kb, [(f.path, f.name) for f in received.files], job_id=job_id,
            groups=_labels(received.field("groups")), tags=_labels(received.field("tags")),
            doc_id=received.field("doc_id") or None,
        )  # fmt: skip
        accepted = await to_thread.run_sync(work)
    except BaseException:
        received.discard()
        raise
    doc_ids = [item.doc_id for item in accepted.items]
    await audit_request(
        request, Action.upload, kb=kb, target=doc_ids[0] if len(doc_ids) == 1 else "", status=202,
        detail={"job_id": job_id, "doc_ids": doc_ids[:1000], "files": len(doc_ids),
                "groups": _labels(received.field("groups")), "tags": _labels(received.field("tags"))},
    )  # fmt: skip
    return UploadAccepted.of(accepted)


# -- reads ----------------------------------------------------------------------------------------------
@router.get("", response_model=DocumentPage)
def list_documents(
    request: Request, params: Annotated[ListParams, Query()], container: ContainerDep, caller: DocumentReader
) -> DocumentPage:
    """The documents of a knowledge base that the caller's groups may read."""
    note_kb(request, params.kb)
    caller.require_kb(params.kb)
    where = DocumentFilter(
        status=params.status, tag=params.tag, group=params.group, q=params.q, updated_since=params.updated_since
    )
    items, total = container.library.page(caller.access, params.kb, where, limit=params.limit, offset=params.offset)
    return DocumentPage(
        items=[Document.model_validate(d) for d in items], total=total, limit=params.limit, offset=params.offset
    )


@router.get("/{doc_id:path}/versions", response_model=VersionList)
def versions(
    request: Request, doc_id: DocId, container: ContainerDep, caller: DocumentReader, kb: Kb = "default"
) -> VersionList:
    note_kb(request, kb)
    caller.require_kb(kb)
    found = container.library.versions(caller.access, kb, doc_id)
    return VersionList(items=[Version.model_validate(v) for v in found])


@router.get("/{doc_id:path}/file", response_class=FileResponse, responses=_FILE_RESPONSE)
def download(
    request: Request, *, doc_id: DocId, container: ContainerDep, caller: DocumentReader, kb: Kb = "default",
    version: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
) -> FileResponse:  # fmt: skip
    """The original bytes of the current version (or of `version`)."""
    note_kb(request, kb)
    caller.require_kb(kb)
    original = container.library.original(caller.access, kb, doc_id, version)
    return FileResponse(
        original.path, media_type=content_type(original), headers=download_headers(original.filename, original)
    )


@router.get("/{doc_id:path}", response_model=Document)
def show(
    request: Request, doc_id: DocId, container: ContainerDep, caller: DocumentReader, kb: Kb = "default"
) -> Document:
    note_kb(request, kb)
    caller.require_kb(kb)
    return Document.model_validate(container.library.get(caller.access, kb, doc_id))


# -- changes --------------------------------------------------------------------------------------------
@router.post(
    "/{doc_id:path}/versions/{version}/restore", status_code=status.HTTP_202_ACCEPTED, response_model=UploadAccepted
)
def restore(
    request: Request, *, doc_id: DocId, version: Annotated[int, Path(ge=1, le=2_147_483_647)], container: ContainerDep,
    caller: DocumentWriter, kb: Kb = "default",
) -> UploadAccepted:  # fmt: skip
    """Queue a job that ingests version `version`'s file again as the newest version (202, like an upload);
    the document keeps its groups and tags as they are now."""
    note_kb(request, kb)
    caller.require_kb(kb)
    accepted = container.library.restore(caller.access, kb, doc_id, version)
    container.audit.record(
        Action.upload, actor=Actor.of_request(request), kb=kb, target=doc_id, status=202,
        detail={"job_id": accepted.job_id, "restored_version": version},
    )  # fmt: skip
    return UploadAccepted.of(accepted)


@router.put(
    "/{doc_id:path}", status_code=status.HTTP_202_ACCEPTED, response_model=UploadAccepted, openapi_extra=_REPLACE_BODY
)
async def replace(
    request: Request, doc_id: DocId, container: ContainerDep, caller: DocumentWriter, kb: Kb = "default"
) -> UploadAccepted:
    """A new version of the document from one file (multipart field `file`)."""
    note_kb(request, kb)
    caller.require_kb(kb)
    job_id = container.jobs.new_id()
    limits = upload_limits(container.settings)
    received = await receive_upload(request, container.uploads_dir / job_id, UploadLimits(limits.max_file_bytes, 1))
    try:
        if [f.field for f in received.files] != ["file"]:
            raise InvalidRequest("send exactly one file, as the multipart field 'file'")
        groups, tags = _labels(received.field("groups")), _labels(received.field("tags"))
        work = partial(
            container.library.replace, caller.access, kb, doc_id, received.files[0].path, job_id=job_id,
            groups=groups, tags=tags,
        )  # fmt: skip
        accepted = await to_thread.run_sync(work)
    except BaseException:
        received.discard()
        raise
    await audit_request(
        request, Action.upload, kb=kb, target=doc_id, status=202,
        detail={"job_id": job_id, "doc_ids": [doc_id], "files": 1, "groups": groups, "tags": tags, "replace": True},
    )  # fmt: skip
    return UploadAccepted.of(accepted)


@router.patch("/{doc_id:path}", response_model=Document)
def update_access(
    request: Request, *, doc_id: DocId, body: AccessUpdate, container: ContainerDep, caller: DocumentWriter,
    kb: Kb = "default",
) -> Document:  # fmt: skip
    """Change who may read the document (groups) and its tags, in place: in effect when this returns."""
    note_kb(request, kb)
    caller.require_kb(kb)
    if body.groups is None and body.tags is None:
        raise InvalidRequest("give new groups and/or tags")
    changed = container.library.set_access(caller.access, kb, doc_id, groups=body.groups, tags=body.tags)
    container.audit.record(
        Action.acl_change, actor=Actor.of_request(request), kb=kb, target=doc_id,
        detail={"groups": {"before": changed.before.groups, "after": changed.after.groups},
                "tags": {"before": changed.before.tags, "after": changed.after.tags}},
    )  # fmt: skip
    return Document.model_validate(changed.after)


@router.delete("/{doc_id:path}", response_model=Deleted)
def delete(
    request: Request, doc_id: DocId, container: ContainerDep, caller: DocumentWriter, kb: Kb = "default"
) -> Deleted:
    """Delete the document: gone from searches and answers at once (its chunks are purged shortly after)."""
    note_kb(request, kb)
    caller.require_kb(kb)
    gone: DocumentView = container.library.delete(caller.access, kb, doc_id)
    container.audit.record(
        Action.delete, actor=Actor.of_request(request), kb=kb, target=doc_id,
        detail={"version": gone.version, "groups": gone.groups, "title": gone.title},
    )  # fmt: skip
    return Deleted(doc_id=doc_id, kb=kb, deleted=True)


# -- downloads --------------------------------------------------------------------------------------------
_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9._ -]")
# Sniffed types too vague to serve when the name says more (.md is text/plain to libmagic).
_VAGUE = ("application/octet-stream", "text/plain", "application/zip")


def content_type(original: Original) -> str:
    with original.path.open("rb") as handle:
        head = handle.read(65536)
    sniffed = str(magic.from_buffer(head, mime=True))
    guessed, _ = mimetypes.guess_type(original.filename)
    if guessed and (sniffed in _VAGUE or not sniffed):
        return guessed
    return sniffed or "application/octet-stream"


def download_headers(filename: str, original: Original) -> dict[str, str]:
    """Always an attachment (an uploaded HTML file must not render as a page of the API's origin), named
    by its base name only: an ASCII fallback without quotes or control characters, and the real name in
    RFC 5987's filename*."""
    name = FilePath(filename.replace("\\", "/")).name or "document"
    name = "".join(ch for ch in name if ch.isprintable()) or "document"
    fallback = _UNSAFE_ASCII.sub("_", name).strip(" .") or "document"
    return {
        "Content-Disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}",
        "X-Content-Type-Options": "nosniff",
        "ETag": f'"{original.version.sha256}"',
        "Cache-Control": "private, no-store",
    }
