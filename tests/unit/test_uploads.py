"""The pieces of /documents that need no models: the streamed multipart receiver, per-method body limits,
download headers, the content-addressed file store and the feedback export layout."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from app.documents.router import download_headers
from app.documents.uploads import UploadLimits, receive_upload
from app.errors import install_error_handlers
from app.feedback.service import FeedbackEntry, settings_digest
from app.ops.limits import BodySizeLimit
from app.settings import Settings
from ingest.documents import Original, VersionInfo
from ingest.files import FileStore


def receiver_app(folder: Path, limits: UploadLimits) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/up")
    async def up(request: Request) -> dict[str, object]:
        got = await receive_upload(request, folder, limits)
        return {
            "fields": got.fields,
            "files": [
                {"field": f.field, "name": f.name, "size": f.size, "data": f.path.read_text()} for f in got.files
            ],
        }

    return TestClient(app)


def test_files_stream_to_disk_under_their_checked_names(tmp_path: Path) -> None:
    client = receiver_app(tmp_path / "job", UploadLimits(max_file_bytes=100, max_files=3))
    r = client.post(
        "/up",
        files=[("files", ("teamA/policy.md", b"# A")), ("files", ("b.txt", b"bee"))],
        data={"kb": "default", "groups": "a,b"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fields"] == {"kb": ["default"], "groups": ["a,b"]}
    assert [(f["name"], f["size"], f["data"]) for f in body["files"]] == [
        ("teamA/policy.md", 3, "# A"),
        ("b.txt", 3, "bee"),
    ]
    assert (tmp_path / "job" / "files" / "teamA" / "policy.md").read_bytes() == b"# A"


@pytest.mark.parametrize(
    ("files", "status", "words"),
    [
        ([("a.md", b"x" * 101)], 413, "a.md is larger than"),
        ([(f"f{i}.md", b"x") for i in range(4)], 413, "at most 3 files"),
        ([("../escape.md", b"x")], 400, "refused file name"),
        ([("/etc/passwd", b"x")], 400, "refused file name"),
        ([(".env", b"x")], 400, "hidden files"),
        ([("same.md", b"x"), ("same.md", b"y")], 400, "two files are named"),
    ],
)
def test_a_refused_upload_leaves_nothing_behind(
    tmp_path: Path, files: list[tuple[str, bytes]], status: int, words: str
) -> None:
    client = receiver_app(tmp_path / "job", UploadLimits(max_file_bytes=100, max_files=3))
    r = client.post("/up", files=[("files", ("ok.md", b"fine")), *(("files", f) for f in files)])
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"]
    assert not (tmp_path / "job").exists()


def test_a_body_that_is_not_multipart_is_a_clear_400(tmp_path: Path) -> None:
    client = receiver_app(tmp_path / "job", UploadLimits(max_file_bytes=100, max_files=3))
    r = client.post("/up", json={"files": "x"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]


def test_body_limits_can_name_a_method() -> None:
    limit = BodySizeLimit(FastAPI(), max_bytes=10, limits={"/ui": 20, "POST /documents": 30, "PUT /documents": 40})
    assert limit.limit_for("/documents", "POST") == 30
    assert limit.limit_for("/documents/a/b.md", "PUT") == 40
    assert limit.limit_for("/documents/a/b.md", "PATCH") == 10
    assert limit.limit_for("/documents", "GET") == 10
    assert limit.limit_for("/ui/upload", "POST") == 20
    assert limit.limit_for("/documentsx", "POST") == 10


def _original(tmp_path: Path, name: str) -> Original:
    version = VersionInfo(
        version=1, status="ready", sha256="ab" * 32, size_bytes=1, pages=None, chunks=1, source="", error="",
        error_code="", job_id="", acl_groups=[], tags=[], timings={}, created_at=datetime.now(UTC),
        published_at=None,
    )  # fmt: skip
    return Original(tmp_path / "x", name, version)


@pytest.mark.parametrize(
    ("name", "fallback"),
    [
        ("report.pdf", "report.pdf"),
        ('we"ird;x=1\r\nSet-Cookie: a.md', "we_ird_x_1Set-Cookie_ a.md"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\plan.docx", "plan.docx"),
        ("报告.pdf", "__.pdf"),
    ],
)
def test_downloads_are_attachments_under_a_safe_name(tmp_path: Path, name: str, fallback: str) -> None:
    headers = download_headers(name, _original(tmp_path, name))
    disposition = headers["Content-Disposition"]
    assert disposition.startswith(f"attachment; filename=\"{fallback}\"; filename*=UTF-8''")
    assert "\r" not in disposition and "\n" not in disposition
    assert disposition.count('"') == 2
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_the_file_store_keeps_bytes_once_by_hash(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    source = tmp_path / "a.md"
    source.write_bytes(b"hello")
    sha = store.keep("default", source)
    assert sha == hashlib.sha256(b"hello").hexdigest()
    kept = store.find("default", sha)
    assert kept is not None and kept.read_bytes() == b"hello"
    source.unlink()  # the uploads folder goes; the kept bytes stay
    assert kept.read_bytes() == b"hello" and store.keep("default", kept) == sha
    assert store.find("other", sha) is None and store.find("default", "../../etc") is None
    store.drop("default")
    assert store.find("default", sha) is None


def test_feedback_exports_as_a_qa_set_line() -> None:
    moment = datetime.now(UTC)
    entry = FeedbackEntry(
        feedback_id="f1", answer_id="a1", rating="up", comment="", wrong_chunk_ids=[], kb="default",
        key_name="alice", question="How many days?", answer="25 days [1].",
        citations=[{"doc_id": "hr/leave.md", "chunk_id": "c1"}], refused=False, degraded=False, model="m",
        settings_digest="d", answered_at=moment, created_at=moment,
    )  # fmt: skip
    row = entry.qa_row()
    assert (row["id"], row["question"], row["answers"], row["doc"], row["answerable"]) == (
        "f1", "How many days?", ["25 days [1]."], "leave.md", True,
    )  # fmt: skip
    down = FeedbackEntry(**{**entry.__dict__, "rating": "down"}).qa_row()
    assert down["answers"] == [] and down["doc"] == "" and down["given_answer"] == "25 days [1]."


def test_the_settings_digest_follows_what_shapes_answers(tmp_path: Path) -> None:
    base = Settings(home=tmp_path)
    assert settings_digest(base) == settings_digest(Settings(home=tmp_path, api={"port": 9000}))  # type: ignore[arg-type]
    assert settings_digest(base) != settings_digest(Settings(home=tmp_path, retrieval={"top_k": 9}))  # type: ignore[arg-type]
