"""Groups belong to the document, persistently and fail-closed; knowledge bases are managed by admins.
Real Milvus Lite, real MiniLM, real SQLite; the CLI in-process (CliRunner) and the API through TestClient."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.access.roles import Role
from app.cli import cli
from app.container import Container
from app.main import create_app
from app.settings import Settings
from core.protocols import VectorStore
from core.types import Access, SearchFilter
from ingest.access import DocumentAccess
from tests.integration.conftest import write

pytestmark = pytest.mark.integration

A, B = Access.groups(["a"]), Access.groups(["b"])
EVERYONE = (A, B, Access.everything())


def settings_for(home: Path) -> Settings:
    return Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False}, api={"ui_enabled": False},  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    c = Container(settings_for(tmp_path_factory.mktemp("acl-home")))
    yield c
    c.store.close()


def found(c: Container, kb: str, query: str, access: Access) -> set[str]:
    """The documents a search as `access` returns (every hit, before any relevance threshold)."""
    return {h.chunk.doc_id for h in c.query.search(query, kb=kb, top_k=20, flt=SearchFilter(access=access)).hits}


def restricted_folder(root: Path) -> Path:
    folder = root / "restricted"
    write(folder / "payroll.md", "# Payroll\n\nSalaries are paid on the 25th; payroll questions go to Dana.\n")
    write(folder / "bonus.md", "# Bonus\n\nThe yearly bonus pool is 8 percent of salaries, paid in March.\n")
    return folder


QUERY = "salaries payroll bonus paid"


def test_reingesting_a_restricted_folder_without_groups_keeps_it_restricted(kb: Container, tmp_path: Path) -> None:
    folder = restricted_folder(tmp_path)
    first = kb.ingest.ingest_paths([folder], kb="keep", acl_groups=["b"])
    assert {r.status for r in first} == {"indexed"}
    write(folder / "payroll.md", "# Payroll\n\nSalaries are paid on the 26th now; payroll questions go to Lee.\n")
    again = {r.doc_id: r for r in kb.ingest.ingest_paths([folder], kb="keep")}  # no groups given
    assert (again["payroll.md"].status, again["payroll.md"].version) == ("indexed", 2)
    assert again["bonus.md"].status == "unchanged"
    assert found(kb, "keep", QUERY, A) == set()
    assert found(kb, "keep", QUERY, B) == {"payroll.md", "bonus.md"}
    assert found(kb, "keep", QUERY, Access.public_only()) == set()
    assert {tuple(c.acl_groups) for c in kb.store.document_chunks("keep", "payroll.md") if c.version == 2} == {("b",)}
    assert kb.documents.show("keep", "payroll.md").acl_groups == ["b"]


def test_a_new_document_gets_its_kbs_default_groups_or_is_for_admins_only(kb: Container, tmp_path: Path) -> None:
    kb.registry.create_knowledge_base("staffkb", default_groups=["staff"])
    doc = write(tmp_path / "canteen.md", "# Canteen\n\nThe canteen serves lunch from noon until two.\n")
    assert kb.ingest.ingest_file(doc, doc_id="canteen.md", kb="staffkb").status == "indexed"
    query = "when does the canteen serve lunch"
    assert found(kb, "staffkb", query, Access.groups(["staff"])) == {"canteen.md"}
    assert found(kb, "staffkb", query, A) == set()
    # No defaults (a knowledge base nobody configured): readable by admins only, never by the world.
    assert kb.ingest.ingest_file(doc, doc_id="canteen.md", kb="bare").status == "indexed"
    assert found(kb, "bare", query, Access.groups(["a", "b", "staff"])) == set()
    assert found(kb, "bare", query, Access.public_only()) == set()
    assert found(kb, "bare", query, Access.everything()) == {"canteen.md"}


def search_as(client: TestClient, secret: str, kb: str, query: str) -> set[str]:
    r = client.post(
        "/search", json={"query": query, "kb": kb, "top_k": 20}, headers={"Authorization": f"Bearer {secret}"}
    )
    assert r.status_code == 200, r.text
    return {h["doc_id"] for h in r.json()["hits"]}


def test_set_acl_moves_a_document_between_groups_at_once(kb: Container, tmp_path: Path) -> None:
    doc = write(tmp_path / "roadmap.md", "# Roadmap\n\nThe 2025 product roadmap ships the mobile app in May.\n")
    assert kb.ingest.ingest_file(doc, doc_id="roadmap.md", kb="moves", acl_groups=["b"]).status == "indexed"
    query = "product roadmap mobile app"
    client = TestClient(create_app(kb.settings, kb))
    key_a = kb.keys.create(name="employee-a", role=Role.employee, groups=["a"], kbs=["moves"]).secret
    key_b = kb.keys.create(name="employee-b", role=Role.employee, groups=["b"], kbs=["moves"]).secret
    assert search_as(client, key_a, "moves", query) == set()
    assert search_as(client, key_b, "moves", query) == {"roadmap.md"}

    moved = kb.access.set("moves", "roadmap.md", groups=["a"])
    assert (moved.acl_groups, moved.pending) == (["a"], False) and moved.chunks >= 1
    assert found(kb, "moves", query, A) == {"roadmap.md"}
    assert found(kb, "moves", query, B) == set()
    assert search_as(client, key_a, "moves", query) == {"roadmap.md"}
    assert search_as(client, key_b, "moves", query) == set()

    kb.access.set("moves", "roadmap.md", groups=["b"])
    assert found(kb, "moves", query, A) == set()
    assert search_as(client, key_a, "moves", query) == set()
    assert search_as(client, key_b, "moves", query) == {"roadmap.md"}
    # Nothing was embedded again: still the one version.
    assert [v.version for v in kb.documents.history("moves", "roadmap.md")] == [1]


class _BrokenStore:
    """The store a process had when it died: the registry has recorded the change, no chunk is rewritten."""

    def __init__(self, real: VectorStore) -> None:
        self._real = real

    def update_access(self, kb: str, doc_id: str, version: int, acl_groups: Sequence[str], tags: Sequence[str]) -> int:
        raise ConnectionError("the process died here")


def test_a_set_acl_that_dies_part_way_hides_the_document_until_the_worker_repairs_it(
    kb: Container, tmp_path: Path
) -> None:
    doc = write(tmp_path / "merger.md", "# Merger\n\nThe merger with Initech closes in the third quarter.\n")
    assert kb.ingest.ingest_file(doc, doc_id="merger.md", kb="crash", acl_groups=["b"]).status == "indexed"
    query = "merger with Initech closes"
    dying = DocumentAccess(registry=kb.registry, store=_BrokenStore(kb.store))  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        dying.set("crash", "merger.md", groups=["a"])
    # The chunks still carry "b", the registry says "a": nobody sees the document meanwhile.
    for access in EVERYONE:
        assert found(kb, "crash", query, access) == set()
    assert kb.documents.show("crash", "merger.md").access_pending
    # The worker's poll finishes the change.
    assert kb.worker().run(until_idle=True) == 0
    assert found(kb, "crash", query, A) == {"merger.md"}
    assert found(kb, "crash", query, B) == set()
    info = kb.documents.show("crash", "merger.md")
    assert (info.acl_groups, info.access_pending) == (["a"], False)


def test_symlinks_out_of_an_ingested_folder_are_reported_and_not_read(kb: Container, tmp_path: Path) -> None:
    secret = write(tmp_path / "private" / "passwords.md", "# Passwords\n\nThe root password is hunter2.\n")
    folder = tmp_path / "share"
    write(folder / "welcome.md", "# Welcome\n\nWelcome to the team wiki.\n")
    (folder / "passwords.md").symlink_to(secret)
    results = {r.doc_id: r for r in kb.ingest.ingest_paths([folder], kb="links", acl_groups=[])}
    assert results["welcome.md"].status == "indexed"
    assert (results["passwords.md"].status, results["passwords.md"].error_code) == ("failed", "unsafe_link")
    assert found(kb, "links", "root password hunter2", Access.everything()) <= {"welcome.md"}


# -- knowledge bases: the API ---------------------------------------------------------------------------


def test_admins_manage_knowledge_bases_over_http(kb: Container, tmp_path: Path) -> None:
    app = create_app(kb.settings, kb)
    client = TestClient(app)
    admin = {"Authorization": f"Bearer {kb.keys.create(name='kb-admin', role=Role.admin, kbs=['*']).secret}"}
    staff = kb.keys.create(name="kb-employee", role=Role.employee, groups=["a"], kbs=["*"]).secret
    editor = kb.keys.create(name="kb-editor", role=Role.editor, groups=["a"], kbs=["*"]).secret

    for secret in (staff, editor):
        r = client.get("/admin/kbs", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert client.get("/admin/kbs").status_code == 401

    r = client.post("/admin/kbs", json={"name": "legal", "description": "Contracts", "default_groups": ["lawyers"]},
                    headers=admin)  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["default_groups"] == ["lawyers"] and r.json()["documents"] == 0
    again = client.post("/admin/kbs", json={"name": "legal"}, headers=admin)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    bad = client.post("/admin/kbs", json={"name": "no-dashes"}, headers=admin)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"
    assert client.post("/admin/kbs", json={"name": "x", "default_groups": ["a b"]}, headers=admin).status_code == 422

    doc = write(tmp_path / "nda.md", "# NDA\n\nEvery contractor signs the NDA before the first day.\n")
    assert kb.ingest.ingest_file(doc, doc_id="nda.md", kb="legal").status == "indexed"
    assert found(kb, "legal", "contractor signs the NDA", Access.groups(["lawyers"])) == {"nda.md"}
    listed = {k["name"]: k for k in client.get("/admin/kbs", headers=admin).json()}
    assert listed["legal"]["documents"] == 1 and listed["legal"]["description"] == "Contracts"

    r = client.patch("/admin/kbs/legal", json={"default_groups": ["lawyers", "board"]}, headers=admin)
    assert r.status_code == 200 and r.json()["default_groups"] == ["lawyers", "board"]
    assert r.json()["description"] == "Contracts"
    missing = client.patch("/admin/kbs/nowhere", json={"description": "x"}, headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.patch("/admin/kbs/bad-name", json={}, headers=admin).status_code == 422

    gone = client.delete("/admin/kbs/legal", headers=admin)
    assert gone.status_code == 200 and gone.json() == {"name": "legal", "documents": 1}
    assert not kb.store._client.has_collection(kb.store.collection("legal"))
    assert kb.registry.documents("legal", include_deleted=True) == []
    assert "legal" not in {k["name"] for k in client.get("/admin/kbs", headers=admin).json()}
    assert client.delete("/admin/kbs/legal", headers=admin).status_code == 404

    # The name rule is in the OpenAPI document, for clients to read.
    spec = app.openapi()
    create_schema = spec["components"]["schemas"]["KnowledgeBaseCreate"]["properties"]["name"]
    assert create_schema["pattern"] == "^[A-Za-z0-9_]{1,64}$"
    params = spec["paths"]["/admin/kbs/{name}"]["delete"]["parameters"]
    assert params[0]["schema"]["pattern"] == "^[A-Za-z0-9_]{1,64}$"


# -- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KB_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("KB_RERANKER__ENABLED", "false")
    monkeypatch.setenv("KB_SECURITY__DEFAULT_GROUPS", '["employees"]')
    return tmp_path


def run(*args: str, code: int = 0, stdin: str | None = None) -> str:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    assert result.exit_code == code, result.output
    return result.stdout


def test_the_cli_keeps_groups_on_reingest_and_changes_them_with_set_acl(home: Path) -> None:
    folder = restricted_folder(home)
    run("ingest", "--wait", "--json", "--kb", "hr", "--acl", "b", str(folder))
    write(folder / "bonus.md", "# Bonus\n\nThe yearly bonus pool is 9 percent of salaries, paid in April.\n")
    report = json.loads(run("ingest", "--wait", "--json", "--kb", "hr", str(folder)))  # without --acl
    assert {d["doc_id"]: d["status"] for d in report["documents"]} == {"bonus.md": "indexed", "payroll.md": "unchanged"}
    fresh = write(home / "other" / "rota.md", "# Rota\n\nThe on-call rota changes every Monday morning.\n")
    run("ingest", "--wait", "--json", "--kb", "hr", str(fresh))

    c = Container(Settings())
    try:
        assert found(c, "hr", QUERY, A) == set()
        assert found(c, "hr", QUERY, B) == {"payroll.md", "bonus.md"}
        # A new document in a knowledge base first made by `kb ingest` gets the configured default groups.
        assert c.documents.show("hr", "rota.md").acl_groups == ["employees"]
        listed = json.loads(run("kb", "list", "--json"))
        assert [(k["name"], k["default_groups"], k["documents"]) for k in listed] == [("hr", ["employees"], 3)]

        out = json.loads(run("docs", "set-acl", "bonus.md", "--kb", "hr", "--groups", "a", "--tags", "pay", "--json"))
        assert (out["acl_groups"], out["tags"], out["pending"]) == (["a"], ["pay"], False)
        assert found(c, "hr", QUERY, A) == {"bonus.md"}
        assert found(c, "hr", QUERY, B) == {"payroll.md"}
        assert "no indexed document" in CliRunner().invoke(cli, ["docs", "set-acl", "nope.md", "--kb", "hr",
                                                                  "--groups", "a"]).output  # fmt: skip
        run("docs", "set-acl", "bonus.md", "--kb", "hr", "--groups", "a b", code=2)
        run("docs", "set-acl", "bonus.md", "--kb", "hr", code=2)
    finally:
        c.store.close()


def test_the_cli_manages_knowledge_bases(home: Path) -> None:
    made = json.loads(run("kb", "create", "legal", "--description", "Contracts", "--default-groups", "lawyers",
                          "--json"))  # fmt: skip
    assert (made["name"], made["default_groups"], made["documents"]) == ("legal", ["lawyers"], 0)
    assert json.loads(run("kb", "create", "open", "--json"))["default_groups"] == ["employees"]  # configured
    assert json.loads(run("kb", "create", "closed", "--default-groups", "", "--json"))["default_groups"] == []
    assert "already exists" in CliRunner().invoke(cli, ["kb", "create", "legal"]).output
    run("kb", "create", "legal", code=1)
    run("kb", "create", "bad-name", code=2)
    run("kb", "update", "legal", "--default-groups", "lawyers,board")
    run("kb", "update", "nowhere", "--description", "x", code=1)
    doc = write(home / "nda.md", "# NDA\n\nEvery contractor signs the NDA before the first day.\n")
    run("ingest", "--wait", "--kb", "legal", str(doc))
    lines = run("kb", "list")
    assert "legal" in lines and "1 docs" in lines and "lawyers,board" in lines

    run("kb", "delete", "legal", code=1, stdin="n\n")  # not confirmed: nothing happens
    assert "legal" in run("kb", "list")
    assert json.loads(run("kb", "delete", "legal", "--yes", "--json")) == {"name": "legal", "documents": 1}
    assert "legal" not in run("kb", "list")
    run("kb", "delete", "legal", "--yes", code=1)
    c = Container(Settings())
    try:
        assert not c.store._client.has_collection(c.store.collection("legal"))
        assert c.registry.documents("legal", include_deleted=True) == []
    finally:
        c.store.close()
