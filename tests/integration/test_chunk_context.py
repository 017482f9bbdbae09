"""Contextual chunk headers and small-to-big context through the real stack: unstructured, MiniLM, Milvus
Lite (jieba BM25), SQLite. A chunk's title changes what finds it, never what is returned or cited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.container import Container
from app.settings import Settings
from core.chunk_context import with_header
from tests.conftest import EVERYTHING
from tests.integration.conftest import write

pytestmark = pytest.mark.integration

# The programme's name is in the title only; the canteen note says "allowance" more often. Without the
# header nothing in the relocation document's text matches "Zephyr relocation".
DOCS = {
    "zephyr.md": "# Zephyr Relocation Programme\n\nThe allowance is paid in two instalments after the move.\n",
    "canteen.md": (
        "# Canteen Notes\n\nThe lunch allowance is paid monthly. An allowance not spent lapses; "
        "the allowance cannot be carried over.\n"
    ),
}
QUESTION = "Zephyr relocation allowance"


def _container(home: Path, *, header: bool) -> Container:
    settings = Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False},  # type: ignore[arg-type]
        ingest={"header_in_vectors": header, "header_in_bm25": header},  # type: ignore[arg-type]
        retrieval={"min_relevance": {"cosine": 0.0, "lexical": 0.0, "cosine_lexical": 0.0}},  # type: ignore[arg-type]
    )  # fmt: skip
    c = Container(settings)
    folder = home / "docs"
    for name, text in DOCS.items():
        write(folder / name, text)
    results = c.ingest.ingest_paths([folder], kb="default")
    assert [r.status for r in results] == ["indexed", "indexed"], results
    return c


@pytest.fixture(scope="module")
def kbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, Container]]:
    made = {h: _container(tmp_path_factory.mktemp(f"header-{h}"), header=h) for h in (True, False)}
    yield made
    for c in made.values():
        c.store._client.close()


@pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
def test_the_title_finds_the_chunk_only_with_headers(kbs: dict[bool, Container], mode: str) -> None:
    with_headers = kbs[True].query.search(QUESTION, flt=EVERYTHING, top_k=2, mode=mode)  # type: ignore[arg-type]
    without = kbs[False].query.search(QUESTION, flt=EVERYTHING, top_k=2, mode=mode)  # type: ignore[arg-type]
    assert with_headers.hits[0].chunk.doc_id == "zephyr.md", [h.chunk.doc_id for h in with_headers.hits]
    if mode == "bm25":  # the body alone shares only "allowance", which the canteen note says three times
        assert without.hits[0].chunk.doc_id == "canteen.md", [h.chunk.doc_id for h in without.hits]
    # Whatever found it, the text returned and cited is the chunk's own.
    body = "The allowance is paid in two instalments after the move."
    (found,) = [h.chunk for h in with_headers.hits if h.chunk.doc_id == "zephyr.md"]
    assert found.text == body and found.title == "Zephyr Relocation Programme"
    (source,) = [s for s in with_headers.sources if s.hit.chunk.doc_id == "zephyr.md"]
    citation = source.citation()
    assert source.text == body and citation.text == body and "Zephyr" not in citation.snippet
    assert (citation.doc_id, citation.page) == ("zephyr.md", None)


def test_the_header_is_in_the_stored_vector_and_not_in_the_stored_text(kbs: dict[bool, Container]) -> None:
    for header, c in kbs.items():
        (chunk,) = c.store.document_chunks("default", "zephyr.md")
        assert chunk.text == "The allowance is paid in two instalments after the move."
        titled, plain = c.embedder.embed([with_header(chunk), chunk.text], "passage")
        assert np.dot(titled, plain) < 0.99  # the title moves the vector: the check below can tell them apart
        stored = c.store.best_cosine("default", titled if header else plain, [chunk.chunk_id])
        assert stored == pytest.approx(1.0, abs=1e-3), header


def test_access_changes_keep_the_header_in_bm25(kbs: dict[bool, Container]) -> None:
    c = kbs[True]
    (chunk,) = c.store.document_chunks("default", "zephyr.md")
    # update_access rewrites every row from what it reads back: the header must survive the rewrite.
    assert c.store.update_access("default", "zephyr.md", chunk.version, ["public", "staff"], ["hr"]) == 1
    found = c.query.search("Zephyr", flt=EVERYTHING, top_k=1, mode="bm25")
    assert [h.chunk.doc_id for h in found.hits] == ["zephyr.md"] and found.hits[0].chunk.text == chunk.text


def test_reindex_keeps_the_header_in_vectors_and_bm25(kbs: dict[bool, Container]) -> None:
    from app.audit.trail import Actor

    c = kbs[True]
    c.reindexing.reindex("default", actor=Actor.local_admin())
    (chunk,) = c.store.document_chunks("default", "zephyr.md")
    assert chunk.text == "The allowance is paid in two instalments after the move."
    titled = c.embedder.embed([with_header(chunk)], "passage")[0]
    assert c.store.best_cosine("default", titled, [chunk.chunk_id]) == pytest.approx(1.0, abs=1e-3)
    found = c.query.search("Zephyr", flt=EVERYTHING, top_k=1, mode="bm25")
    assert [h.chunk.doc_id for h in found.hits] == ["zephyr.md"]
