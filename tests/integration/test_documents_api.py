"""Documents, jobs and feedback over HTTP: a real uvicorn server (its own ingestion worker thread) on a
temporary KB_HOME with real SQLite, Milvus Lite and MiniLM; the model server is a closed port, so /ask
degrades to passages at once but still gives an answer id."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn

from app.access.roles import Role
from app.container import Container
from app.main import create_app
from app.settings import Settings
from core.procs import free_port
from tests.integration.docgen import docx_with_table, text_pdf
from tests.services import BACKENDS, backend_settings

pytestmark = pytest.mark.integration

ADMIN, EDITOR, EDITOR_OTHER, EMPLOYEE_A, EMPLOYEE_B = "admin", "editor", "editor-other", "employee-a", "employee-b"
MAX_FILES = 20


@dataclass
class Server:
    url: str
    container: Container
    keys: dict[str, str]
    files: dict[str, bytes]  # doc id -> the bytes uploaded by the first job

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)


def _settings(home: Path, request: pytest.FixtureRequest, backend: str) -> Settings:
    return Settings.model_validate(backend_settings(request, backend, {
        "home": home, "models_dir": home / "models", "api": {"ui_enabled": False},
        "reranker": {"enabled": False}, "ingest": {"worker_in_api": True, "purge_grace_s": 0.5},
        # The model's path (its server is down, so answers are degraded), not the extractive default.
        "llm": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_retries": 0, "timeout_s": 5,
                "answer_mode": "generative"},
        "rate_limits": {"enabled": False}, "limits": {"max_upload_mb": 1, "max_upload_files": MAX_FILES},
    }))  # fmt: skip


# The whole module runs on the embedded default and again on PostgreSQL, Redis and a Milvus server.
@pytest.fixture(scope="module", params=BACKENDS)
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("docs-api")
    container = Container(_settings(home, request, request.param))
    container.registry.create_knowledge_base("default", default_groups=["a"])
    container.registry.create_knowledge_base("other", default_groups=["a"])
    keys = container.keys
    made = {
        ADMIN: keys.create(name=ADMIN, role=Role.admin, kbs=["*"]),
        EDITOR: keys.create(name=EDITOR, role=Role.editor, groups=["a"], kbs=["default"]),
        EDITOR_OTHER: keys.create(name=EDITOR_OTHER, role=Role.editor, groups=["a"], kbs=["other"]),
        EMPLOYEE_A: keys.create(name=EMPLOYEE_A, role=Role.employee, groups=["a"], kbs=["default"]),
        EMPLOYEE_B: keys.create(name=EMPLOYEE_B, role=Role.employee, groups=["b"], kbs=["default"]),
    }
    port = free_port()
    config = uvicorn.Config(
        create_app(container.settings, container), host="127.0.0.1", port=port, lifespan="on", log_config=None,
        access_log=False,
    )  # fmt: skip
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    url = f"http://127.0.0.1:{port}"
    while not running.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.2)
    try:
        yield Server(url, container, {name: new.secret for name, new in made.items()}, {})
    finally:
        running.should_exit = True
        thread.join(timeout=60)
        container.store._client.close()


def follow(client: httpx.Client, job_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The job's `progress` events until `done`, read from the SSE stream as they come."""
    progress: list[dict[str, Any]] = []
    with client.stream("GET", f"/jobs/{job_id}/events", timeout=300) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                if name == "done":
                    return progress, data
                progress.append(data)
    raise AssertionError(f"the stream ended without a done event after {progress[-1:]}")


def upload(client: httpx.Client, files: list[tuple[str, bytes]], **form: str) -> httpx.Response:
    return client.post("/documents", files=[("files", (name, data)) for name, data in files], data=form)


def search_docs(client: httpx.Client, query: str) -> list[str]:
    r = client.post("/search", json={"query": query, "kb": "default", "mode": "bm25"})
    assert r.status_code == 200, r.text
    return [hit["doc_id"] for hit in r.json()["hits"]]


def wait_done(client: httpx.Client, job_id: str) -> dict[str, Any]:
    _, done = follow(client, job_id)
    assert done["state"] == "done", done
    return done


@pytest.fixture(scope="module")
def uploaded(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Twenty files of mixed kinds in one request (one a zip of two), followed to the end over SSE."""
    folder = tmp_path_factory.mktemp("uploads")
    files: list[tuple[str, bytes]] = []
    for i in range(8):
        files.append((f"note-{i}.md", f"# Note {i}\n\nThe quarterly marker word is walrus{i}.\n".encode()))
    for i in range(7):
        files.append((f"memo-{i}.txt", f"Memo {i}: the canteen opens at {7 + i} o'clock, says heron{i}.\n".encode()))
    files.append(("equipment.docx", docx_with_table(folder / "equipment.docx").read_bytes()))
    files.append(
        ("travel.pdf", text_pdf(folder / "travel.pdf", ["Travel policy", "Trains are booked 2nd class."]).read_bytes())
    )
    files.append(
        ("handbook.pdf", text_pdf(folder / "h.pdf", ["Handbook page one", "Page two: ibis rules"]).read_bytes())
    )
    files.append(("teamA/policy.md", b"# Team A policy\n\nVersion one mentions the okapi.\n"))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("one.md", "# Zipped one\n\nInside the archive lives a narwhal.\n")
        zf.writestr("sub/two.txt", "Zipped two talks about a pangolin.\n")
    files.append(("bundle.zip", archive.getvalue()))
    assert len(files) == MAX_FILES

    with server.client(EDITOR) as editor:
        r = upload(editor, files)
        assert r.status_code == 202, r.text
        accepted = r.json()
        assert accepted["kb"] == "default" and accepted["job_id"]
        progress, done = follow(editor, accepted["job_id"])
    server.files.update({name: data for name, data in files if not name.endswith(".zip")})
    return {"accepted": accepted, "progress": progress, "done": done}


def test_twenty_files_upload_and_are_followed_to_the_end(server: Server, uploaded: dict[str, Any]) -> None:
    accepted, progress, done = uploaded["accepted"], uploaded["progress"], uploaded["done"]
    expected = {*server.files, "bundle.zip/one.md", "bundle.zip/sub/two.txt"}
    assert {i["doc_id"] for i in accepted["items"]} == expected
    assert {i["file"] for i in accepted["items"]} >= {"teamA/policy.md", "equipment.docx"}
    assert not any(i["file"].startswith("/") for i in accepted["items"]), accepted["items"]
    assert progress and progress[0]["job_id"] == accepted["job_id"]
    assert done["state"] == "done" and done["files_total"] == len(expected) and done["files_failed"] == 0, done
    assert {i["status"] for i in done["items"]} == {"indexed"}, done["items"]
    assert done["chunks_done"] >= len(expected)

    with server.client(ADMIN) as admin:
        listed = admin.get("/documents", params={"kb": "default", "limit": 500}).json()
        assert expected <= {d["doc_id"] for d in listed["items"]}
        doc = admin.get("/documents/teamA/policy.md", params={"kb": "default"}).json()
        assert doc["version"] == 1 and doc["status"] == "ready" and doc["groups"] == ["a"] and doc["chunks"] >= 1
        assert set(doc) == {
            "doc_id", "kb", "title", "version", "status", "chunks", "pages", "groups", "tags", "created_at",
            "updated_at", "access_pending",
        }  # fmt: skip
        jobs = admin.get("/jobs", params={"kb": "default"}).json()
        assert accepted["job_id"] in {j["job_id"] for j in jobs["items"]}
        page = admin.get("/documents", params={"kb": "default", "q": "NOTE-", "limit": 3, "offset": 2}).json()
        assert page["total"] == 8 and [d["doc_id"] for d in page["items"]] == ["note-2.md", "note-3.md", "note-4.md"]
    [row] = [e for e in server.container.audit.query(action="upload") if e.detail["job_id"] == accepted["job_id"]]
    assert (row.actor, row.kb, row.status) == (EDITOR, "default", 202)
    assert sorted(row.detail["doc_ids"]) == sorted(expected)


def test_download_returns_the_original_bytes(server: Server, uploaded: dict[str, Any]) -> None:
    with server.client(EMPLOYEE_A) as employee:
        for doc_id in ("equipment.docx", "travel.pdf", "teamA/policy.md"):
            r = employee.get(f"/documents/{doc_id}/file", params={"kb": "default"})
            assert r.status_code == 200, r.text
            assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(server.files[doc_id]).hexdigest()
            disposition = r.headers["content-disposition"]
            name = doc_id.rsplit("/", 1)[-1]
            assert disposition == f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}", disposition
        assert r.headers["content-type"].startswith("text/markdown")
        pdf = employee.get("/documents/travel.pdf/file", params={"kb": "default"})
        assert pdf.headers["content-type"] == "application/pdf"
        # A member of an uploaded zip is kept too, though the worker removed the unpacked folder.
        member = employee.get("/documents/bundle.zip/sub/two.txt/file", params={"kb": "default"})
        assert member.status_code == 200 and b"pangolin" in member.content


def test_a_strange_file_name_is_served_under_a_safe_name(server: Server, uploaded: dict[str, Any]) -> None:
    with server.client(EDITOR) as editor:
        name = 'q"uote;x=1 über.md'
        r = upload(editor, [(name, b"# Odd\n\nA file with an odd name about the axolotl.\n")])
        assert r.status_code == 202, r.text
        doc_id = r.json()["items"][0]["doc_id"]
        wait_done(editor, r.json()["job_id"])
        # Ids go into URLs percent-encoded (this one holds "%22": httpx's escape of the quote).
        got = editor.get(f"/documents/{quote(doc_id)}/file", params={"kb": "default"})
        assert got.status_code == 200, got.text
        disposition = got.headers["content-disposition"]
        fallback = disposition.split('filename="', 1)[1].split('"', 1)[0]
        assert '"' not in fallback and ";" not in fallback and "\n" not in disposition and "/" not in fallback
        assert "filename*=UTF-8''" in disposition and "%C3%BC" in disposition
        for unsafe in ("../../etc/passwd", "/abs/path.md", "a/../../b.md", ".env"):
            before = set(server.container.uploads_dir.rglob("*"))
            r = upload(editor, [(unsafe, b"# x\n\nx\n")])
            assert r.status_code == 400, (unsafe, r.text)
            assert r.json()["error"]["code"] == "invalid_request"
            assert set(server.container.uploads_dir.rglob("*")) <= before


def test_replace_then_restore_brings_version_one_back(server: Server, uploaded: dict[str, Any]) -> None:
    with server.client(EDITOR) as editor:
        assert "teamA/policy.md" in search_docs(editor, "okapi")
        r = editor.put(
            "/documents/teamA/policy.md", params={"kb": "default"},
            files={"file": ("policy.md", b"# Team A policy\n\nVersion two mentions the zebrafish.\n")},
        )  # fmt: skip
        assert r.status_code == 202, r.text
        assert [i["doc_id"] for i in r.json()["items"]] == ["teamA/policy.md"]
        wait_done(editor, r.json()["job_id"])
        assert "teamA/policy.md" in search_docs(editor, "zebrafish")
        assert "teamA/policy.md" not in search_docs(editor, "okapi")

        restored = editor.post("/documents/teamA/policy.md/versions/1/restore", params={"kb": "default"})
        assert restored.status_code == 202, restored.text
        wait_done(editor, restored.json()["job_id"])
        assert "teamA/policy.md" in search_docs(editor, "okapi")
        assert "teamA/policy.md" not in search_docs(editor, "zebrafish")
        versions = editor.get("/documents/teamA/policy.md/versions", params={"kb": "default"}).json()["items"]
        assert [v["version"] for v in versions] == [3, 2, 1]
        assert versions[0]["status"] == "ready" and versions[0]["sha256"] == versions[2]["sha256"]
        v2 = editor.get("/documents/teamA/policy.md/file", params={"kb": "default", "version": 2})
        assert b"zebrafish" in v2.content
        missing = editor.post("/documents/teamA/policy.md/versions/9/restore", params={"kb": "default"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    rows = server.container.audit.query(action="upload", actor=EDITOR)
    assert [e.detail.get("replace") for e in rows if e.target == "teamA/policy.md"][-2:] == [True, None]
    assert rows[-1].detail["restored_version"] == 1 and rows[-1].detail["job_id"] == restored.json()["job_id"]


def test_a_deleted_document_is_gone_from_search_at_once(server: Server, uploaded: dict[str, Any]) -> None:
    with server.client(EDITOR) as editor:
        assert "note-3.md" in search_docs(editor, "walrus3")
        r = editor.delete("/documents/note-3.md", params={"kb": "default"})
        assert r.status_code == 200 and r.json() == {"doc_id": "note-3.md", "kb": "default", "deleted": True}
        assert "note-3.md" not in search_docs(editor, "walrus3")
        assert editor.get("/documents/note-3.md", params={"kb": "default"}).status_code == 404
        assert editor.delete("/documents/note-3.md", params={"kb": "default"}).status_code == 404
    rows = server.container.audit.query(action="delete", kb="default")
    assert [(e.target, e.actor) for e in rows] == [("note-3.md", EDITOR)]


def test_new_groups_take_effect_at_once(server: Server, uploaded: dict[str, Any]) -> None:
    with server.client(ADMIN) as admin:
        r = upload(admin, [("secret-b.md", b"# For B\n\nOnly group b reads about the quokka.\n")], groups="b")
        assert r.status_code == 202, r.text
        wait_done(admin, r.json()["job_id"])
    with server.client(EMPLOYEE_A) as employee:
        assert "secret-b.md" not in search_docs(employee, "quokka")
        assert employee.get("/documents/secret-b.md", params={"kb": "default"}).status_code == 404
        assert employee.get("/documents/secret-b.md/file", params={"kb": "default"}).status_code == 404
        with server.client(EDITOR) as editor:
            # An editor changes only what it may read, and cannot tell the rest from a missing document.
            r = editor.patch("/documents/secret-b.md", params={"kb": "default"}, json={"groups": ["a"]})
            assert r.status_code == 404, r.text
        with server.client(ADMIN) as admin:
            r = admin.patch("/documents/secret-b.md", params={"kb": "default"}, json={"groups": ["a"], "tags": ["hr"]})
            assert r.status_code == 200, r.text
            assert r.json()["groups"] == ["a"] and r.json()["tags"] == ["hr"] and not r.json()["access_pending"]
        assert "secret-b.md" in search_docs(employee, "quokka")
        assert employee.get("/documents/secret-b.md", params={"kb": "default"}).json()["groups"] == ["a"]
        tagged = employee.get("/documents", params={"kb": "default", "tag": "hr"}).json()
        assert [d["doc_id"] for d in tagged["items"]] == ["secret-b.md"]
    changes = server.container.audit.query(action="acl_change", kb="default")
    assert [(e.target, e.actor, e.detail["groups"]) for e in changes] == [
        ("secret-b.md", ADMIN, {"before": ["b"], "after": ["a"]})
    ]


def test_who_may_do_what(server: Server, uploaded: dict[str, Any]) -> None:
    with server.client(EMPLOYEE_A) as employee:
        r = upload(employee, [("x.md", b"# x\n\nx\n")])
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert employee.get("/documents", params={"kb": "other"}).status_code == 403
        assert employee.delete("/documents/note-1.md", params={"kb": "default"}).status_code == 403
    with server.client(EDITOR) as editor:
        r = upload(editor, [("x.md", b"# x\n\nx\n")], kb="other")
        assert r.status_code == 403 and "other" in r.json()["error"]["message"]
    assert server.container.audit.query(action="forbidden", kb="other", actor=EDITOR), "the refusal is on record"
    with server.client(EDITOR_OTHER) as other:
        r = upload(other, [("only-other.md", b"# Other\n\nIn the other knowledge base.\n")], kb="other")
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
    with server.client(EMPLOYEE_B) as employee_b:
        # b reads nothing of the upload (its kb's default group is a)
        listed = employee_b.get("/documents", params={"kb": "default", "limit": 500}).json()
        assert listed["items"] == [] and listed["total"] == 0
        assert employee_b.get("/documents/note-1.md/file", params={"kb": "default"}).status_code == 404
        # a job of a knowledge base the key is not granted does not exist for it
        assert employee_b.get(f"/jobs/{job_id}").status_code == 404
        own = employee_b.get(f"/jobs/{uploaded['accepted']['job_id']}").json()
        assert own["items"] == [] and own["files_total"] > 0
    with server.client(EMPLOYEE_A) as employee_a:
        listed = employee_a.get("/documents", params={"kb": "default", "limit": 500}).json()
        ids = {d["doc_id"] for d in listed["items"]}
        assert "note-1.md" in ids and listed["total"] == len(ids)
        assert all("a" in d["groups"] or "public" in d["groups"] for d in listed["items"])


def test_uploads_over_the_limits_are_refused_and_leave_nothing(server: Server) -> None:
    uploads = server.container.uploads_dir

    def leftovers() -> set[Path]:
        # The worker may still be removing finished jobs' folders: nothing may appear, things may go.
        return set(uploads.rglob("*")) if uploads.exists() else set()

    before = leftovers()
    with server.client(EDITOR) as editor:
        big = b"# Big\n\n" + b"x" * (1024 * 1024)
        r = upload(editor, [("small.md", b"# Small\n\nsmall\n"), ("big.md", big)])
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large", r.text
        assert "big.md" in r.json()["error"]["message"]
        assert leftovers() <= before
        many = [(f"many-{i}.md", b"# m\n\nm\n") for i in range(MAX_FILES + 1)]
        r = upload(editor, many)
        assert r.status_code == 413, r.text
        assert leftovers() <= before
        r = editor.put("/documents/x.md", params={"kb": "default"}, files={"file": ("x.md", big)})
        assert r.status_code == 413, r.text
        assert leftovers() <= before
        assert editor.get("/documents/many-0.md", params={"kb": "default"}).status_code == 404


def test_feedback_on_an_answer(server: Server, uploaded: dict[str, Any]) -> None:
    question = "When does the canteen open according to heron2?"
    with server.client(EMPLOYEE_A) as employee:
        answer = employee.post("/ask", json={"question": question, "kb": "default"}).json()
        assert answer["degraded"] and answer["answer_id"]
        r = employee.post(
            "/feedback",
            json={"answer_id": answer["answer_id"], "rating": "down", "comment": "too vague",
                  "wrong_chunk_ids": [answer["sources"][0]["chunk_id"]]},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        feedback_id = r.json()["feedback_id"]
        unknown = employee.post("/feedback", json={"answer_id": "0" * 32, "rating": "up"})
        assert unknown.status_code == 404

        # A streamed answer is kept by the time its `done` event arrives.
        streamed = employee.post("/ask", json={"question": "Who talks about a pangolin?", "stream": True})
        done = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")][-1]
        assert employee.post("/feedback", json={"answer_id": done["answer_id"], "rating": "up"}).status_code == 201
    with server.client(EMPLOYEE_B) as other:
        r = other.post("/feedback", json={"answer_id": answer["answer_id"], "rating": "up"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    with server.client(EDITOR) as editor:
        assert editor.get("/admin/feedback").status_code == 403
    with server.client(ADMIN) as admin:
        listed = admin.get("/admin/feedback", params={"rating": "down"}).json()
        [row] = listed["items"]
        assert row["feedback_id"] == feedback_id and row["question"] == question and row["comment"] == "too vague"
        assert row["key_name"] == EMPLOYEE_A and row["degraded"] and row["citations"] and row["settings_digest"]
        exported = admin.get("/admin/feedback", params={"format": "jsonl"})
        assert exported.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in exported.text.splitlines()]
        assert {line["question"] for line in lines} == {question, "Who talks about a pangolin?"}
        assert all({"id", "question", "answers", "doc", "answerable"} <= set(line) for line in lines)
    metrics = server.container.metrics.feedback
    assert metrics.labels("down")._value.get() >= 1 and metrics.labels("up")._value.get() >= 1


def test_a_nul_in_a_question_or_a_name_is_no_server_error(server: Server, uploaded: dict[str, Any]) -> None:
    # PostgreSQL's text cannot hold NUL: the answer to such a question was given but not kept (no feedback
    # possible), and looking up a job or document named with one was a 500. Both databases now store U+FFFD.
    with server.client(EMPLOYEE_A) as employee:
        answer = employee.post("/ask", json={"question": "canteen\x00 heron2?", "kb": "default"}).json()
        r = employee.post("/feedback", json={"answer_id": answer["answer_id"], "rating": "up"})
        assert r.status_code == 201, r.text
    with server.client(ADMIN) as admin:
        for path in ("/jobs/ab%00c", "/documents/no%00such.md"):
            missing = admin.get(path, params={"kb": "default"})
            assert missing.status_code == 404, (path, missing.text)
        [row] = admin.get("/admin/feedback", params={"rating": "up"}).json()["items"][-1:]
        assert row["question"] == "canteen\ufffd heron2?"


def test_a_file_ingested_from_a_folder_is_served_until_it_is_removed(
    server: Server, tmp_path: Path, uploaded: dict[str, Any]
) -> None:
    source = tmp_path / "server-side.md"
    source.write_text("# Server side\n\nIngested from a folder on the server, about the tapir.\n")
    container = server.container
    job_id = container.documents.submit([source], kb="default", uploads_dir=container.uploads_dir)
    with server.client(EMPLOYEE_A) as employee:
        wait_done(employee, job_id)
        got = employee.get("/documents/server-side.md/file", params={"kb": "default"})
        assert got.status_code == 200 and got.content == source.read_bytes()
        # Not copied: a file on the server is its own record, as long as it is there and unchanged.
        assert not any(container.files.root.rglob(hashlib.sha256(got.content).hexdigest()))
        source.write_text("# Server side\n\nChanged since.\n")
        changed = employee.get("/documents/server-side.md/file", params={"kb": "default"})
        assert changed.status_code == 404 and "no longer available" in changed.json()["error"]["message"]
        source.unlink()
        gone = employee.get("/documents/server-side.md/file", params={"kb": "default"})
        assert gone.status_code == 404 and "server-side.md" in gone.json()["error"]["message"]
        assert str(tmp_path) not in gone.text  # the server's folders are not named
