"""ACL from the caller's key (never the request body), filter values that cannot widen a filter, and
kb's retrieval as a LangChain retriever inside an LCEL chain; real MiniLM + Milvus Lite + SQLite keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.access.keys import NewKey
from app.access.roles import Role
from app.container import Container
from app.main import create_app
from app.settings import Settings
from core.types import Access, Chunk, SearchFilter
from retrieval.langchain_retriever import KbRetriever

pytestmark = pytest.mark.integration

DOCS = [
    ("public.md", ["public"], ["general"], "The office canteen opens at 8 am and serves breakfast until 10 am."),
    ("salaries.md", ["hr"], ["pay"], "Salary bands: engineers in band 3 earn between 70k and 90k per year."),
    ("budget.md", ["finance"], ["pay"], "The finance budget for salary increases next year is 4 percent."),
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    home = tmp_path_factory.mktemp("acl")
    settings = Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False},  # type: ignore[arg-type]
        ingest={"worker_in_api": False},  # type: ignore[arg-type]
    )  # fmt: skip
    c = Container(settings)
    chunks = [
        Chunk(chunk_id=Chunk.make_id(doc, 1, 0), doc_id=doc, text=text, title=doc, acl_groups=acl, tags=tags)
        for doc, acl, tags, text in DOCS
    ]
    c.store.upsert("default", chunks, c.embedder.embed([ch.text for ch in chunks], "passage"))
    c.store.flush("default")
    yield c
    c.store.close()


def _docs(client: TestClient, body: dict[str, object], headers: dict[str, str] | None = None) -> set[str]:
    r = client.post("/search", json={"query": "salary", "top_k": 10, **body}, headers=headers or {})
    assert r.status_code == 200, r.text
    return {h["doc_id"] for h in r.json()["hits"]}


def _key(kb: Container, name: str, groups: list[str]) -> NewKey:
    return kb.keys.create(name=name, role=Role.employee, groups=groups, kbs=["default"])


def test_acl_groups_come_from_the_api_key_not_the_body(kb: Container) -> None:
    client = TestClient(create_app(kb.settings, kb))
    hr, staff = _key(kb, "hr-reader", ["hr"]), _key(kb, "staff-reader", ["staff"])
    bearer = {"Authorization": f"Bearer {staff.secret}"}
    assert _docs(client, {}, bearer) == {"public.md"}
    # A body cannot choose groups: unknown fields are ignored, the caller keeps its key's groups.
    assert _docs(client, {"acl_groups": ["hr", "finance"]}, bearer) == {"public.md"}
    assert _docs(client, {}, {"Authorization": f"Bearer {hr.secret}"}) == {"public.md", "salaries.md"}
    assert _docs(client, {}, {"X-API-Key": hr.secret}) == {"public.md", "salaries.md"}
    # No key, or a wrong one, is refused outright instead of falling back to some default groups.
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": f"Bearer {hr.secret}x"}):
        r = client.post("/search", json={"query": "salary"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", headers
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "evil", ['hr" or 1==1 or "', 'x"] or array_length(acl_groups) >= 0 or ["', "') or ('1'=='1", "hr\\"]
)
def test_hostile_filter_values_cannot_widen_the_filter(kb: Container, evil: str) -> None:
    def found(flt: SearchFilter) -> set[str]:
        hits = kb.store.search("default", "salary budget canteen", None, mode="bm25", limit=10, flt=flt)
        return {h.chunk.doc_id for h in hits}

    assert found(SearchFilter(access=Access.groups([evil]))) == {"public.md"}
    assert found(SearchFilter(access=Access.everything(), doc_ids=[evil])) == set()
    assert found(SearchFilter(access=Access.everything(), tags=[evil])) == set()
    # The filter does work:
    assert found(SearchFilter(tags=["pay"], access=Access.groups(["finance"]))) == {"budget.md"}


def test_kb_retriever_in_an_lcel_chain_keeps_the_acl(kb: Container) -> None:
    from langchain_core.documents import Document
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    retriever = KbRetriever(pipeline=kb.query, top_k=5, access=Access.groups(["hr"]))

    def format_docs(docs: list[Document]) -> str:
        return "\n".join(f"[{d.metadata['index']}] {d.metadata['title']}: {d.page_content}" for d in docs)

    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = (
        {"context": retriever | format_docs, "question": RunnablePassthrough()}
        | prompt
        | RunnableLambda(lambda p: p.to_string())
    )
    text = chain.invoke("What do engineers earn per year?")
    assert "[1] salaries.md: Salary bands" in text
    assert "budget.md" not in text  # finance-only document stays out

    docs = retriever.invoke("salary bands")
    assert docs[0].metadata["doc_id"] == "salaries.md" and docs[0].id == docs[0].metadata["chunk_id"]
    assert {"title", "source", "page", "score", "score_kind", "acl_groups"} <= set(docs[0].metadata)


def test_kb_retriever_cannot_be_built_without_the_callers_access(kb: Container) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        KbRetriever(pipeline=kb.query)  # type: ignore[call-arg]


def test_me_names_the_role_groups_and_only_the_granted_knowledge_bases(kb: Container) -> None:
    kb.registry.create_knowledge_base("default", description="Company documents")
    kb.registry.create_knowledge_base("finance", description="Finance only")
    key = kb.keys.create(name="me-reader", role=Role.employee, groups=["hr"], kbs=["default", "not_created"])
    r = TestClient(create_app(kb.settings, kb)).get("/me", headers={"Authorization": f"Bearer {key.secret}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["role"], body["groups"]) == ("me-reader", "employee", ["hr"])
    assert body["knowledge_bases"] == [{"name": "default", "description": "Company documents"}]
    assert "ask" in body["permissions"] and "write_documents" not in body["permissions"]
    assert TestClient(create_app(kb.settings, kb)).get("/me").status_code == 401


def test_anonymous_access_when_switched_on_reads_public_documents_only(kb: Container) -> None:
    settings = kb.settings.model_copy(
        update={"security": kb.settings.security.model_copy(update={"anonymous_access": True})}
    )
    client = TestClient(create_app(settings, kb))
    assert _docs(client, {}) == {"public.md"}
    # Read-only, and only the configured knowledge bases.
    assert client.get("/documents").status_code == 403
    assert client.post("/search", json={"query": "salary", "kb": "finance"}).status_code == 403
    # A wrong key is still refused: whoever sends one meant to be someone.
    assert client.post("/search", json={"query": "salary"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    # Off (the default): no key, no answer.
    assert TestClient(create_app(kb.settings, kb)).post("/search", json={"query": "salary"}).status_code == 401
