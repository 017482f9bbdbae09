"""The audit trail of a scripted session over HTTP: real Milvus Lite, MiniLM and SQLite, the model server
down (answers degrade to passages at once)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.access.roles import Role
from app.container import Container
from app.main import create_app
from app.settings import Settings
from core.procs import free_port
from tests.integration.conftest import write
from tests.services import BACKENDS, backend_settings

pytestmark = pytest.mark.integration

VPN = "# VPN\n\nVPN access expires after 90 days; renew it in the self-service portal.\n"
LEAVE = "# Leave\n\nNew employees get 25 days of paid annual leave per year.\n"


def settings_for(home: Path, request: pytest.FixtureRequest, backend: str, **security: Any) -> Settings:
    return Settings.model_validate(backend_settings(request, backend, {
        "home": home, "models_dir": home / "models", "api": {"ui_enabled": False},
        "reranker": {"enabled": False}, "ingest": {"worker_in_api": False},
        # The model's path (down here, so answers are degraded), not the extractive default.
        "llm": {
            "base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_retries": 0, "timeout_s": 5,
            "answer_mode": "generative",
        },
        "security": security,
    }))  # fmt: skip


# On the embedded default and again on PostgreSQL, Redis and a Milvus server.
@pytest.fixture(scope="module", params=BACKENDS)
def kb(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Container]:
    home = tmp_path_factory.mktemp("kbhome")
    container = Container(settings_for(home, request, request.param, sensitive_terms=["Project Falcon"]))
    docs = home / "docs"
    paths = [write(docs / "vpn.md", VPN), write(docs / "leave.md", LEAVE)]
    results = container.ingest.ingest_paths(paths, kb="default", acl_groups=["a"])
    assert [r.status for r in results] == ["indexed", "indexed"]
    yield container
    container.store._client.close()


@pytest.fixture(scope="module")
def client(kb: Container) -> Iterator[TestClient]:
    with TestClient(create_app(kb.settings, kb)) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return events


def test_a_session_leaves_exactly_its_trail(kb: Container, client: TestClient) -> None:
    root = kb.keys.create(name="root", role=Role.admin, kbs=["*"]).secret  # made locally: not audited
    before = len(kb.audit.query(limit=1000))
    made = client.post(
        "/admin/keys", json={"name": "alice", "role": "employee", "groups": ["a"], "kbs": ["default"]},
        headers=bearer(root),
    )  # fmt: skip
    assert made.status_code == 201, made.text
    alice = made.json()["key"]

    asked = client.post("/ask", json={"question": "When does VPN access expire?"}, headers=bearer(alice))
    assert asked.status_code == 200, asked.text
    answer = asked.json()
    assert answer["degraded"] and answer["sources"][0]["doc_id"] == "vpn.md"
    asked_docs = list(dict.fromkeys(s["doc_id"] for s in answer["sources"]))

    streamed = client.post(
        "/ask", json={"question": "How many days of annual leave?", "stream": True}, headers=bearer(alice)
    )
    assert streamed.status_code == 200
    events = sse(streamed.text)
    assert [name for name, _ in events] == ["token", "citations", "done"]
    streamed_docs = list(dict.fromkeys(s["doc_id"] for s in events[1][1]["sources"]))
    assert streamed_docs[0] == "leave.md"

    searched = client.post("/search", json={"query": "annual leave days"}, headers=bearer(alice))
    assert searched.status_code == 200
    searched_docs = list(dict.fromkeys(h["doc_id"] for h in searched.json()["hits"]))
    assert searched_docs[0] == "leave.md"

    assert client.post("/search", json={"query": "annual leave"}).status_code == 401
    other_kb = client.post("/ask", json={"question": "salaries?", "kb": "hr"}, headers=bearer(alice))
    assert other_kb.status_code == 403
    assert client.post("/admin/keys/alice/revoke", headers=bearer(root)).status_code == 200
    assert client.post("/search", json={"query": "vpn"}, headers=bearer(alice)).status_code == 401
    request_ids = [r.headers["x-request-id"] for r in (made, asked, streamed, searched)]

    rows = kb.audit.query(limit=1000)[before:]
    trail = [(r.action, r.actor, r.role, r.status, r.kb, r.target, r.detail.get("docs")) for r in rows]
    assert trail == [
        ("key_create", "root", "admin", 201, "", "alice", None),
        ("ask", "alice", "employee", 200, "default", "", asked_docs),
        ("ask", "alice", "employee", 200, "default", "", streamed_docs),
        ("search", "alice", "employee", 200, "default", "", searched_docs),
        ("unauthorized", "", "", 401, "", "", None),
        ("forbidden", "alice", "employee", 403, "hr", "", None),
        ("key_revoke", "root", "admin", 200, "", "alice", None),
        ("unauthorized", "", "", 401, "", "", None),
    ]
    assert [r.request_id for r in rows[:4]] == request_ids
    assert {r.ip for r in rows} == {"testclient"}
    ask_json, ask_stream, search = rows[1], rows[2], rows[3]
    assert ask_json.detail == {
        "question": "When does VPN access expire?", "docs": asked_docs, "refused": False, "degraded": True,
        "withheld": False, "stream": False,
    }  # fmt: skip
    assert ask_stream.detail == {
        "question": "How many days of annual leave?", "docs": streamed_docs, "refused": False, "degraded": True,
        "withheld": False, "stream": True, "completed": True,
    }  # fmt: skip
    assert search.detail == {"question": "annual leave days", "docs": searched_docs}
    assert rows[-1].detail["key_id"] == rows[0].detail["key_id"]  # the revoked key, by id


def test_a_sensitive_question_is_refused_and_audited(kb: Container, client: TestClient) -> None:
    staff = kb.keys.create(name="staff", role=Role.employee, groups=["a"], kbs=["default"]).secret
    for stream in (False, True):
        response = client.post(
            "/ask", json={"question": "Is project FALCON on schedule?", "stream": stream}, headers=bearer(staff)
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "sensitive_term"
    rows = kb.audit.query(actor="staff")
    assert [(r.action, r.status, r.kb, r.detail) for r in rows] == [
        ("ask", 400, "default", {"question": "Is project FALCON on schedule?", "refused": "sensitive_term"})
    ] * 2
    # The answer side: a degraded answer is the passages themselves; one that holds a term is withheld.
    write(kb.settings.home / "docs" / "falcon.md", "# Plans\n\nProject Falcon launches in March next year.\n")
    kb.ingest.ingest_paths([kb.settings.home / "docs" / "falcon.md"], kb="default", acl_groups=["a"])
    withheld = client.post("/ask", json={"question": "What launches in March?"}, headers=bearer(staff)).json()
    assert withheld["withheld"] and withheld["sources"] == [] and "falcon" not in json.dumps(withheld).lower()
    events = sse(client.post("/ask", json={"question": "What launches in March?", "stream": True},
                             headers=bearer(staff)).text)  # fmt: skip
    assert [name for name, _ in events] == ["error"] and events[0][1]["code"] == "withheld"
    last_two = kb.audit.query(actor="staff")[-2:]
    assert [(r.detail["withheld"], r.detail["docs"], r.detail["stream"]) for r in last_two] == [
        (True, [], False), (True, [], True)
    ]  # fmt: skip


def test_questions_can_be_audited_as_hashes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    home = tmp_path / "var"
    container = Container(settings_for(home, request, "embedded", audit_questions="hash"))
    try:
        container.ingest.ingest_paths([write(tmp_path / "vpn.md", VPN)], kb="default", acl_groups=["a"])
        staff = container.keys.create(name="staff", role=Role.employee, groups=["a"], kbs=["default"]).secret
        question = "When does VPN access expire?"
        with TestClient(create_app(container.settings, container)) as client:
            assert client.post("/search", json={"query": question}, headers=bearer(staff)).status_code == 200
            assert client.post("/ask", json={"question": question}, headers=bearer(staff)).status_code == 200
        rows = container.audit.query()
        digest = hashlib.sha256(question.encode("utf-8")).hexdigest()
        assert [(r.action, r.detail["question_sha256"], r.detail["docs"]) for r in rows] == [
            ("search", digest, ["vpn.md"]), ("ask", digest, ["vpn.md"])
        ]  # fmt: skip
        assert all("question" not in r.detail and "VPN" not in json.dumps(r.as_dict()) for r in rows)
    finally:
        container.store._client.close()


def test_a_request_may_choose_the_answer_mode(kb: Container, client: TestClient) -> None:
    key = kb.keys.create(name="mode-chooser", role=Role.employee, groups=["a"], kbs=["default"]).secret
    question = {"question": "How many days of annual leave do new employees get?"}
    # The server's mode is generative and its model is down: degraded.
    default = client.post("/ask", json=question, headers=bearer(key)).json()
    assert default["degraded"] is True
    # Extractive asks no model: the same quotes, not degraded.
    quoted = client.post("/ask", json={**question, "answer_mode": "extractive"}, headers=bearer(key))
    assert quoted.status_code == 200, quoted.text
    body = quoted.json()
    assert body["extractive"] is True and body["degraded"] is False
    assert "25 days" in body["answer"] and body["citations"][0]["doc_id"] == "leave.md"
    evidence = body["citations"][0]["evidence"][0]
    assert body["citations"][0]["text"][evidence["start"] : evidence["end"]] == evidence["text"]
    bad = client.post("/ask", json={**question, "answer_mode": "poetic"}, headers=bearer(key))
    assert bad.status_code == 422 and "error" in bad.json()
