"""/admin/keys, /admin/audit, request ids, the access log, per-key IP allow-lists and `kb audit`, on a real
SQLite database and again on PostgreSQL with Redis (none of these touch Milvus or a model)."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.access.deps import Searcher
from app.access.roles import Role
from app.audit.trail import AuditEntry
from app.cli import cli
from app.container import Container
from app.errors import RateLimited
from app.main import create_app
from app.ops.logs import JSONFormatter
from app.settings import Settings
from core.procs import free_port, port_open
from tests.services import BACKENDS, backend_settings, settings_env

pytestmark = pytest.mark.integration


@dataclass
class Api:
    app: FastAPI
    client: TestClient
    container: Container
    root: str  # an admin key made on the server's machine (not through the API, so not audited)

    def as_(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def audit(self, **filters: Any) -> list[AuditEntry]:
        return self.container.audit.query(**filters)


MakeApi = Callable[..., Api]


# Every test runs on the embedded default and again on PostgreSQL and Redis (a fresh database per test).
@pytest.fixture(params=BACKENDS)
def make_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeApi]:
    made: list[Container] = []

    def make(**security: Any) -> Api:
        home = tmp_path / "var"
        base = {"home": home, "api": {"ui_enabled": False}, "security": security}
        settings = Settings.model_validate(backend_settings(request, request.param, base))
        container = Container(settings)
        made.append(container)
        app = create_app(settings, container)
        root = container.keys.create(name="root", role=Role.admin, kbs=["*"]).secret
        return Api(app, TestClient(app, raise_server_exceptions=False), container, root)

    yield make
    for container in made:
        # A PostgreSQL connection pool per test would otherwise outlive it.
        container.registry.engine.dispose()


@pytest.fixture
def api(make_api: MakeApi) -> Api:
    return make_api()


def create(api: Api, status: int = 201, **body: Any) -> dict[str, Any]:
    response = api.client.post("/admin/keys", json=body, headers=api.as_(api.root))
    assert response.status_code == status, response.text
    data: dict[str, Any] = response.json()
    return data


def test_a_created_key_is_shown_once_and_works(api: Api) -> None:
    created = create(api, name="ops", role="admin", kbs=["*"], groups=["it"], expires="90d")
    secret = created["key"]
    assert secret.startswith("kb_") and created["name"] == "ops" and created["active"] is True
    assert created["groups"] == ["it"] and created["allow_ips"] == []
    expires = datetime.fromisoformat(created["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=90))) < timedelta(minutes=1)

    listed = api.client.get("/admin/keys", headers=api.as_(secret))
    assert listed.status_code == 200
    assert {k["name"] for k in listed.json()} == {"root", "ops"}
    # The secret is in the create answer only; no hash or salt in any answer.
    for text in (listed.text, json.dumps(created)):
        assert "secret_hash" not in text and "salt" not in text
    assert secret not in listed.text and all("key" not in k for k in listed.json())

    (row,) = api.audit(action="key_create")
    assert (row.actor, row.role, row.target, row.status) == ("root", "admin", "ops", 201)
    assert row.detail["groups"] == ["it"] and secret not in json.dumps(row.detail)


def test_revoke_and_rotate(api: Api) -> None:
    ops = create(api, name="ops", role="admin", kbs=["*"])["key"]
    rotated = api.client.post("/admin/keys/ops/rotate", headers=api.as_(api.root))
    assert rotated.status_code == 200
    new = rotated.json()["key"]
    assert new != ops
    assert api.client.get("/admin/keys", headers=api.as_(ops)).status_code == 401
    assert api.client.get("/admin/keys", headers=api.as_(new)).status_code == 200

    revoked = api.client.post("/admin/keys/ops/revoke", headers=api.as_(api.root))
    assert revoked.status_code == 200 and revoked.json()["active"] is False and "key" not in revoked.json()
    assert api.client.get("/admin/keys", headers=api.as_(new)).status_code == 401
    assert "ops" not in {k["name"] for k in api.client.get("/admin/keys", headers=api.as_(api.root)).json()}
    everything = api.client.get("/admin/keys", params={"include_revoked": "true"}, headers=api.as_(api.root))
    assert "ops" in {k["name"] for k in everything.json()}

    again = api.client.post("/admin/keys/ops/rotate", headers=api.as_(api.root))
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    missing = api.client.post("/admin/keys/nobody/revoke", headers=api.as_(api.root))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"

    rows = [(r.action, r.actor, r.target, r.status) for r in api.audit()]
    assert rows == [
        ("key_create", "root", "ops", 201),
        ("key_rotate", "root", "ops", 200),
        ("unauthorized", "", "", 401),  # the old secret
        ("key_revoke", "root", "ops", 200),
        ("unauthorized", "", "", 401),  # the revoked key
    ]
    ops_id = api.audit(action="key_create")[0].detail["key_id"]
    assert [r.detail["key_id"] for r in api.audit(action="unauthorized")] == [ops_id, ops_id]


def test_only_admins_manage_keys_and_names_are_unique(api: Api) -> None:
    staff = create(api, name="staff", role="employee", groups=["a"])["key"]
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys/staff/rotate"), ("GET", "/admin/audit")):
        response = api.client.request(method, path, headers=api.as_(staff), json=None)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "forbidden"
    refused = api.client.post("/admin/keys", json={"name": "x", "role": "admin"}, headers=api.as_(staff))
    assert refused.status_code == 403
    assert api.client.get("/admin/keys").status_code == 401

    duplicate = create(api, 409, name="staff", role="employee")
    assert duplicate["error"]["code"] == "conflict"
    for bad in (
        {"name": "bad name", "role": "employee"},
        {"name": "x", "role": "anonymous"},
        {"name": "x", "role": "employee", "allow_ips": ["not-a-network"]},
        {"name": "x", "role": "employee", "kbs": []},
        {"name": "x", "role": "employee", "expires": "90d", "expires_in_days": 90},
        {"name": "x", "role": "employee", "expires": "soon"},
        {"name": "x", "role": "employee", "secret_hash": "00"},
    ):
        response = api.client.post("/admin/keys", json=bad, headers=api.as_(api.root))
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "invalid_request"

    forbidden = api.audit(action="forbidden")
    assert [(r.actor, r.role, r.status, r.detail["path"]) for r in forbidden] == [
        ("staff", "employee", 403, "/admin/keys"),
        ("staff", "employee", 403, "/admin/keys/staff/rotate"),
        ("staff", "employee", 403, "/admin/audit"),
        ("staff", "employee", 403, "/admin/keys"),
    ]


@pytest.mark.parametrize("presented", ["a" * 65, "two words", "line\nbreak", 'quote"d', "é".encode(), ""])
def test_a_bad_request_id_is_replaced(api: Api, presented: str | bytes) -> None:
    response = api.client.get("/admin/keys", headers={"X-Request-Id": presented})
    rid = response.headers["x-request-id"]
    assert rid != presented and len(rid) == 32 and int(rid, 16) >= 0
    assert response.json()["error"]["request_id"] == rid
    (row,) = api.audit(action="unauthorized")
    assert row.request_id == rid


def test_a_good_request_id_is_echoed_and_every_request_is_logged(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="kb.access"):
        ok = api.client.get("/admin/keys", headers={**api.as_(api.root), "X-Request-Id": "req-1.A_b"})
        refused = api.client.get("/admin/keys", headers={"X-Request-Id": "req-2"})
    assert ok.headers["x-request-id"] == "req-1.A_b"
    assert refused.headers["x-request-id"] == "req-2" and refused.json()["error"]["request_id"] == "req-2"
    lines = [json.loads(JSONFormatter().format(r)) for r in caplog.records if r.name == "kb.access"]
    assert [(x["method"], x["path"], x["status"], x["request_id"], x["actor"]) for x in lines] == [
        ("GET", "/admin/keys", 200, "req-1.A_b", "root"),
        ("GET", "/admin/keys", 401, "req-2", ""),
    ]
    assert all(isinstance(x["duration_ms"], float) and x["msg"] == "request" for x in lines)


def test_an_unexpected_error_keeps_its_request_id(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    @api.app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO):
        response = api.client.get("/boom", headers={"X-Request-Id": "trace-500", **api.as_(api.root)})
    assert response.status_code == 500 and response.headers["x-request-id"] == "trace-500"
    assert response.json()["error"] == {
        "code": "internal_error", "message": "internal error; see the server log", "request_id": "trace-500"
    }  # fmt: skip
    (error,) = [json.loads(JSONFormatter().format(r)) for r in caplog.records if r.msg == "unhandled error"]
    assert error["request_id"] == "trace-500" and "RuntimeError: boom" in error["exc"]
    access = [r for r in caplog.records if r.name == "kb.access"]
    assert [(r.status, r.request_id) for r in access] == [(500, "trace-500")]  # type: ignore[attr-defined]
    assert api.client.get("/boom").status_code == 401  # signed in first, like every route


def test_the_audit_endpoint_filters_and_pages(api: Api) -> None:
    for name in ("k1", "k2", "k3"):
        create(api, name=name, role="service")
    api.client.post("/admin/keys/k2/revoke", headers=api.as_(api.root))
    api.client.get("/admin/keys")  # 401

    def page(**params: Any) -> dict[str, Any]:
        response = api.client.get("/admin/audit", params=params, headers=api.as_(api.root))
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    everything = page()
    assert [e["action"] for e in everything["entries"]] == [
        "key_create", "key_create", "key_create", "key_revoke", "unauthorized"
    ]  # fmt: skip
    assert everything["total"] == 5
    second = page(action="key_create", limit=1, offset=1)
    assert [e["target"] for e in second["entries"]] == ["k2"] and second["total"] == 3
    assert [e["target"] for e in page(action="key_create", order="desc", limit=2)["entries"]] == ["k3", "k2"]
    assert [e["action"] for e in page(status=401)["entries"]] == ["unauthorized"]
    assert page(actor="root", since="1h")["total"] == 4
    assert page(since=(datetime.now(UTC) + timedelta(minutes=5)).isoformat())["total"] == 0
    assert page(until="2000-01-01T00:00")["total"] == 0
    bad = api.client.get("/admin/audit", params={"since": "yesterday"}, headers=api.as_(api.root))
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_text_with_a_nul_is_stored_alike_on_either_database(api: Api) -> None:
    # PostgreSQL's text cannot hold NUL (these were 500s there); both databases store U+FFFD in its place.
    root = api.as_(api.root)
    made = api.client.post("/admin/kbs", json={"name": "nul", "description": "before\x00after"}, headers=root)
    assert made.status_code == 201, made.text
    assert made.json()["description"] == "before\ufffdafter"
    changed = api.client.patch("/admin/kbs/nul", json={"description": "\x00changed"}, headers=root)
    assert changed.status_code == 200 and changed.json()["description"] == "\ufffdchanged", changed.text
    listed = api.client.get("/admin/kbs", headers=root).json()
    assert [kb["description"] for kb in listed if kb["name"] == "nul"] == ["\ufffdchanged"]
    nobody = api.client.get("/admin/audit", params={"actor": "ro\x00ot"}, headers=root)
    assert nobody.status_code == 200 and nobody.json()["total"] == 0


def test_questions_are_stored_as_hashes_when_configured(make_api: MakeApi) -> None:
    # A question refused for a sensitive term never reaches retrieval: the audit row is all there is.
    api = make_api(audit_questions="hash", sensitive_terms=["Project Falcon"])
    staff = create(api, name="staff", role="employee", groups=["a"])["key"]
    question = "What is the budget of project falcon?"
    for path, body in (("/ask", {"question": question}), ("/search", {"query": question})):
        response = api.client.post(path, json=body, headers=api.as_(staff))
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "sensitive_term" and "falcon" not in error["message"].lower()
    rows = api.audit(actor="staff")
    assert [(r.action, r.status, r.kb) for r in rows] == [("ask", 400, "default"), ("search", 400, "default")]
    digest = hashlib.sha256(question.encode()).hexdigest()
    for row in rows:
        assert row.detail == {"question_sha256": digest, "refused": "sensitive_term"}
        assert "falcon" not in json.dumps(row.as_dict()).lower()


def test_sensitive_terms_file_is_read(make_api: MakeApi, tmp_path: Path) -> None:
    terms = tmp_path / "terms.txt"
    terms.write_text("# codenames\n\nOrion\n", encoding="utf-8")
    api = make_api(sensitive_terms_file=str(terms))
    staff = create(api, name="staff", role="employee")["key"]
    response = api.client.post("/search", json={"query": "orion launch date"}, headers=api.as_(staff))
    assert response.status_code == 400 and response.json()["error"]["code"] == "sensitive_term"
    (row,) = api.audit(actor="staff")
    assert (row.action, row.detail["question"], row.detail["refused"]) == (
        "search",
        "orion launch date",
        "sensitive_term",
    )


@pytest.fixture
def server(api: Api) -> Iterator[tuple[str, Api]]:
    """The app behind a real uvicorn server on 127.0.0.1, so requests come from a real client address."""
    port = free_port()
    config = uvicorn.Config(api.app, host="127.0.0.1", port=port, lifespan="off", log_config=None, access_log=False)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port):
        assert time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", api
    running.should_exit = True
    thread.join(timeout=10)


def test_a_key_is_refused_outside_its_networks(server: tuple[str, Api], monkeypatch: pytest.MonkeyPatch) -> None:
    url, api = server
    # One key made with `kb keys create --allow-ip`, one with POST /admin/keys.
    for name, value in settings_env(api.container.settings).items():
        monkeypatch.setenv(name, value)
    made = CliRunner().invoke(
        cli,
        ["keys", "create", "--name", "office", "--role", "admin", "--kb", "*", "--allow-ip", "10.0.0.0/8", "--json"],
    )
    assert made.exit_code == 0, made.output
    office = json.loads(made.stdout)
    assert office["cidrs"] == ["10.0.0.0/8"]
    local = create(api, name="local", role="admin", kbs=["*"], allow_ips=["127.0.0.0/8"])
    assert local["allow_ips"] == ["127.0.0.0/8"]

    with httpx.Client(base_url=url, timeout=10) as client:
        outside = client.get("/admin/keys", headers=api.as_(office["key"]))
        inside = client.get("/admin/keys", headers=api.as_(local["key"]))
    assert outside.status_code == 403 and outside.json()["error"]["code"] == "forbidden"
    assert inside.status_code == 200
    (row,) = api.audit(action="forbidden")
    assert (row.actor, row.ip, row.status, row.detail["path"]) == ("office", "127.0.0.1", 403, "/admin/keys")
    (made_row,) = api.audit(action="key_create", actor="local-admin")
    assert made_row.target == "office" and made_row.detail["cidrs"] == ["10.0.0.0/8"]


def test_kb_audit_prints_the_rows(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in settings_env(api.container.settings).items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    for args in (
        ["keys", "create", "--name", "bot", "--role", "service"],
        ["keys", "rotate", "bot"],
        ["keys", "revoke", "bot"],
    ):
        assert runner.invoke(cli, args).exit_code == 0
    result = runner.invoke(cli, ["audit", "--since", "1h", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["action"], r["actor"], r["role"], r["target"]) for r in rows] == [
        ("key_create", "local-admin", "admin", "bot"),
        ("key_rotate", "local-admin", "admin", "bot"),
        ("key_revoke", "local-admin", "admin", "bot"),
    ]
    assert all(datetime.fromisoformat(r["at"]).tzinfo is not None for r in rows)

    only = runner.invoke(cli, ["audit", "--since", "2000-01-01T00:00", "--action", "key_rotate", "--json"])
    assert [r["action"] for r in json.loads(only.stdout)] == ["key_rotate"]
    assert json.loads(runner.invoke(cli, ["audit", "--since", "1h", "--actor", "root", "--json"]).stdout) == []
    human = runner.invoke(cli, ["audit", "--since", "1h"])
    assert human.exit_code == 0 and "key_revoke" in human.stdout and "local-admin" in human.stdout
    assert runner.invoke(cli, ["audit", "--since", "yesterday"]).exit_code == 2


def test_a_rate_limited_request_is_audited_whichever_route_refuses_it(api: Api) -> None:
    @api.app.post("/limited")
    def limited(caller: Searcher) -> None:
        raise RateLimited(f"{caller.name} is over its limit", retry_after_s=7)

    staff = create(api, name="staff", role="employee")["key"]
    response = api.client.post("/limited", headers={**api.as_(staff), "X-Request-Id": "rl-1"})
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    (row,) = api.audit(action="rate_limited")
    assert (row.actor, row.role, row.status, row.request_id, row.detail) == (
        "staff", "employee", 429, "rl-1", {"method": "POST", "path": "/limited"}
    )  # fmt: skip
