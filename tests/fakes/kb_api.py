"""An in-memory stand-in for the kb API's HTTP contract, for the web app's browser tests that need what the
real API cannot give on demand (a document endpoint not merged yet, a job that fails one file, a model
that streams slowly). The web app is tested against the real API in tests/e2e/test_web_app.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse

ADMIN, EDITOR, EMPLOYEE = (
    "kb_fake_admin_secret_0000000000",
    "kb_fake_editor_secret_00000000",
    "kb_fake_emp_secret_0000000000",
)
_ALL = ["ask", "search", "feedback", "read_documents", "write_documents", "manage_keys", "manage_kbs", "read_audit"]
ROLES = {
    ADMIN: ("alice", "admin", _ALL),
    EDITOR: ("erin", "editor", ["ask", "search", "feedback", "read_documents", "write_documents"]),
    EMPLOYEE: ("bob", "employee", ["ask", "search", "feedback", "read_documents"]),
}


@dataclass
class FakeDoc:
    doc_id: str
    title: str
    text: str
    content: bytes
    groups: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    version: int = 1
    versions: list[int] = field(default_factory=lambda: [1])


@dataclass
class FakeState:
    docs: dict[str, FakeDoc] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    keys: list[dict[str, Any]] = field(default_factory=list)
    llm_down: bool = False
    token_delay_s: float = 0.05
    asks_in_flight: int = 0
    asks: list[dict[str, Any]] = field(default_factory=list)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "request_id": "fake"}}, status_code=status)


def fake_api(state: FakeState) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Response:
        header = request.headers.get("authorization", "")
        if header.removeprefix("Bearer ") not in ROLES:
            return _error(401, "unauthorized", "a valid API key is required")
        response: Response = await call_next(request)
        return response

    def who(request: Request) -> tuple[str, str, list[str]]:
        return ROLES[request.headers["authorization"].removeprefix("Bearer ")]

    @app.get("/me")
    def me(request: Request) -> dict[str, Any]:
        name, role, permissions = who(request)
        return {
            "name": name,
            "role": role,
            "groups": ["a"],
            "permissions": permissions,
            "knowledge_bases": [{"name": "default", "description": ""}, {"name": "hr", "description": "HR"}],
        }

    def sources_for(question: str) -> list[dict[str, Any]]:
        words = {w.lower() for w in question.replace("?", " ").split() if len(w) > 3}
        found = [d for d in state.docs.values() if words & set(d.text.lower().replace(".", " ").split())]
        return [
            {
                "index": i,
                "doc_id": d.doc_id,
                "title": d.title,
                "source": d.doc_id,
                "page": 1,
                "chunk_id": f"{d.doc_id}#0",
                "score": 1.0,
                "snippet": d.text[:200],
            }
            for i, d in enumerate(found[:3], start=1)
        ]

    @app.post("/ask")
    async def ask(request: Request) -> Response:
        body = await request.json()
        state.asks.append(body)
        question = str(body["question"])
        sources = sources_for(question)
        answer_id = uuid.uuid4().hex

        async def events() -> AsyncIterator[str]:
            state.asks_in_flight += 1
            try:
                if not sources:
                    refusal = "I cannot find this in the documents."
                    yield _sse("token", {"text": refusal})
                    yield _sse(
                        "citations",
                        {"answer": refusal, "citations": [], "sources": [], "grounded": False, "sentences": []},
                    )
                    yield _sse(
                        "done",
                        {
                            "answer_id": answer_id,
                            "refused": True,
                            "degraded": False,
                            "message": "no relevant context found",
                            "usage": {},
                            "timings": {},
                        },
                    )
                    return
                if state.llm_down:
                    text = "\n\n".join(f"[{s['index']}] {s['title']}: {s['snippet']}" for s in sources)
                    yield _sse("token", {"text": text})
                    yield _sse(
                        "citations",
                        {"answer": text, "citations": sources, "sources": sources, "grounded": False, "sentences": []},
                    )
                    yield _sse(
                        "done",
                        {
                            "answer_id": answer_id,
                            "refused": False,
                            "degraded": True,
                            "message": "The language model is unavailable; these are the most relevant passages.",
                            "usage": {},
                            "timings": {},
                        },
                    )
                    return
                first = f"The answer is in {sources[0]['title']} [1]."
                second = " Everything else is unsupported."
                words = (first + second).split(" ")
                for i, word in enumerate(words):
                    await asyncio.sleep(state.token_delay_s)
                    yield _sse("token", {"text": word if i == 0 else " " + word})
                sentences = [
                    {"text": first, "citations": [1], "grounded": True},
                    {"text": second.strip(), "citations": [], "grounded": False},
                ]
                yield _sse(
                    "citations",
                    {
                        "answer": first + second,
                        "citations": sources[:1],
                        "sources": sources,
                        "grounded": False,
                        "sentences": sentences,
                    },
                )
                yield _sse(
                    "done",
                    {
                        "answer_id": answer_id,
                        "refused": False,
                        "degraded": False,
                        "message": "",
                        "usage": {"completion_tokens": len(words)},
                        "timings": {},
                    },
                )
            finally:
                state.asks_in_flight -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        body = await request.json()
        state.feedback.append({**body, "actor": who(request)[0]})
        return {"ok": True}

    @app.get("/admin/feedback")
    def list_feedback() -> dict[str, Any]:
        return {"items": state.feedback}

    @app.post("/documents", status_code=202)
    async def upload(
        files: list[UploadFile] = File(...), kb: str = Form("default"), groups: str = Form(""), tags: str = Form("")
    ) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:12]
        items = []
        for f in files:
            content = await f.read()
            name = f.filename or "file"
            ok = not name.endswith(".exe")
            items.append(
                {
                    "file": name,
                    "doc_id": name,
                    "status": "queued",
                    "version": 1,
                    "pages": 0,
                    "chunks": 0,
                    "error": None if ok else "unsupported file type",
                    "error_code": None if ok else "unsupported",
                }
            )
            if ok:
                text = content.decode("utf-8", "replace")
                title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.strip()), name)
                state.docs[name] = FakeDoc(
                    doc_id=name,
                    title=title,
                    text=text,
                    content=content,
                    groups=[g for g in groups.split(",") if g],
                    tags=[t for t in tags.split(",") if t],
                )
        state.jobs[job_id] = {"job_id": job_id, "kb": kb, "started": time.monotonic(), "items": items}
        return {
            "job_id": job_id,
            "kb": kb,
            "items": [{"file": i["file"], "doc_id": i["doc_id"], "status": "queued"} for i in items],
        }

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> Any:
        if job_id not in state.jobs:
            return _error(404, "not_found", "no such job")
        j = state.jobs[job_id]
        elapsed = time.monotonic() - j["started"]
        total = len(j["items"])
        progress = min(elapsed / 3.0, 1.0)  # three seconds to finish, in visible steps
        failed = [i for i in j["items"] if i["error"]]
        done_count = round(progress * (total - len(failed)))
        finished = progress >= 1.0
        items = [{**i, "status": "failed" if i["error"] else ("done" if finished else "running")} for i in j["items"]]
        return {
            "job_id": job_id,
            "kb": j["kb"],
            "state": ("failed" if failed else "done") if finished else "running",
            "stage": "done" if finished else "embedding",
            "current_file": None if finished else j["items"][0]["file"],
            "files_total": total,
            "files_done": done_count,
            "files_failed": len(failed) if finished else 0,
            "pages_done": round(progress * 4),
            "pages_total": 4,
            "chunks_done": round(progress * 10),
            "error": None,
            "items": items,
        }

    @app.get("/documents")
    def documents(kb: str = "default", q: str = "", limit: int = 20, offset: int = 0) -> dict[str, Any]:
        docs = [d for d in state.docs.values() if q.lower() in (d.title + d.doc_id).lower()]
        rows = [
            {
                "doc_id": d.doc_id,
                "kb": kb,
                "title": d.title,
                "version": d.version,
                "status": "published",
                "chunks": 1,
                "pages": 1,
                "groups": d.groups,
                "tags": d.tags,
                "created_at": "2025-01-01T00:00:00Z",
                "updated_at": "2025-01-01T00:00:00Z",
            }
            for d in docs
        ]
        return {"items": rows[offset : offset + limit], "total": len(rows), "limit": limit, "offset": offset}

    @app.get("/documents/{doc_id:path}/file")
    def download(doc_id: str) -> Response:
        doc = state.docs.get(doc_id)
        if doc is None:
            return _error(404, "not_found", "no such document")
        return Response(
            doc.content, media_type="text/markdown", headers={"content-disposition": f'attachment; filename="{doc_id}"'}
        )

    @app.get("/documents/{doc_id:path}/versions")
    def versions(doc_id: str) -> dict[str, Any]:
        doc = state.docs[doc_id]
        return {
            "items": [
                {
                    "version": v,
                    "status": "published" if v == doc.version else "retired",
                    "sha256": "ab" * 32,
                    "pages": 1,
                    "chunks": 1,
                    "error": None,
                    "created_at": "2025-01-01T00:00:00Z",
                    "published_at": "2025-01-01T00:00:00Z",
                }
                for v in doc.versions
            ]
        }

    @app.post("/documents/{doc_id:path}/versions/{n}/restore")
    def restore(doc_id: str, n: int) -> dict[str, Any]:
        state.docs[doc_id].version = n
        return {"doc_id": doc_id, "version": n}

    @app.put("/documents/{doc_id:path}")
    async def replace(doc_id: str, file: UploadFile = File(...)) -> Any:
        doc = state.docs[doc_id]
        doc.content = await file.read()
        doc.version = max(doc.versions) + 1
        doc.versions.append(doc.version)
        return JSONResponse(
            {
                "job_id": "replace",
                "kb": "default",
                "items": [{"file": file.filename, "doc_id": doc_id, "status": "queued"}],
            },
            status_code=202,
        )

    @app.patch("/documents/{doc_id:path}")
    async def patch(doc_id: str, request: Request) -> dict[str, Any]:
        body = await request.json()
        state.docs[doc_id].groups, state.docs[doc_id].tags = body["groups"], body["tags"]
        return {"doc_id": doc_id, **body}

    @app.delete("/documents/{doc_id:path}")
    def delete(doc_id: str) -> Response:
        state.docs.pop(doc_id, None)
        return Response(status_code=204)

    @app.post("/admin/keys", status_code=201)
    async def create_key(request: Request) -> dict[str, Any]:
        body = await request.json()
        key = {**body, "key_id": uuid.uuid4().hex[:12], "active": True, "created_at": "2025-01-01T00:00:00Z"}
        state.keys.append(key)
        return {**key, "key": f"kb_{key['key_id']}_newsecretnewsecretnewsecret"}

    @app.get("/admin/keys")
    def keys() -> list[dict[str, Any]]:
        return state.keys

    @app.post("/admin/keys/{name}/revoke")
    def revoke(name: str) -> dict[str, Any]:
        for key in state.keys:
            if key["name"] == name:
                key["active"] = False
                return key
        return {}

    @app.get("/admin/audit")
    def audit(limit: int = 100, offset: int = 0) -> dict[str, Any]:
        entries = [
            {
                "id": 1,
                "at": "2025-01-01T00:00:00+00:00",
                "actor": "alice",
                "role": "admin",
                "ip": "127.0.0.1",
                "action": "key_create",
                "kb": "",
                "target": "bob",
                "status": 201,
                "detail": {},
            }
        ]
        return {"entries": entries, "total": 1, "limit": limit, "offset": offset}

    return app


def _sse(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
