"""Reranking with a real (tiny, randomly initialised) cross-encoder and the relevance threshold, on real
MiniLM embeddings in Milvus Lite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.container import Container
from app.settings import Settings
from core.types import Chunk, RelevanceThresholds
from retrieval.pipeline import QueryPipeline
from retrieval.reranker import CrossEncoderReranker, load_reranker
from tests.conftest import ALL, EVERYTHING

pytestmark = pytest.mark.integration

TEXTS = [
    ("leave.md", "Annual leave: new employees get 20 days of paid annual leave per calendar year."),
    ("leave.md", "Unused annual leave may be carried over until the end of March."),
    ("expense.md", "Expense reports must be submitted within 30 days with receipts attached."),
    ("vpn.md", "To reset your VPN password, open the self-service portal and choose Reset."),
    ("zh.md", "报销单必须在30天内提交，并附上发票。"),
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    home = tmp_path_factory.mktemp("rerank")
    # MiniLM alone: Chinese questions take the BM25-only path that a model without Chinese leaves them.
    settings = Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False}, embedding={"other_languages": "none"}
    )  # type: ignore[arg-type]
    c = Container(settings)
    chunks = [
        Chunk(chunk_id=Chunk.make_id(doc, 1, i), doc_id=doc, ordinal=i, text=text, title=doc)
        for i, (doc, text) in enumerate(TEXTS)
    ]
    c.store.upsert("default", chunks, c.embedder.embed([ch.text for ch in chunks], "passage"))
    c.store.flush("default")
    yield c
    c.store._client.close()


def _pipeline(c: Container, **kwargs: object) -> QueryPipeline:
    return QueryPipeline(embedder=c.embedder, store=c.store, candidates=10, **kwargs)  # type: ignore[arg-type]


def test_reranker_reorders_by_cross_encoder_scores(kb: Container, tiny_cross_encoder: Path) -> None:
    reranker = CrossEncoderReranker(str(tiny_cross_encoder))
    pipeline = _pipeline(kb, reranker=reranker, rerank_candidates=5, rerank_wanted=True)
    question = "How many days of annual leave?"
    r = pipeline.search(question, flt=EVERYTHING, top_k=5)
    assert r.reranked and "rerank_ms" in r.timings
    assert all(h.score_kind == "rerank" and 0.0 <= h.score <= 1.0 for h in r.hits)
    # The order is the cross-encoder's own, whatever the first-stage order was.
    expected = reranker._model.predict([(question, h.chunk.text) for h in r.hits]).tolist()
    assert [round(h.score, 5) for h in r.hits] == sorted((round(s, 5) for s in expected), reverse=True)
    assert r.relevance.kind == "rerank" and r.relevance.value == pytest.approx(r.hits[0].score)


def test_missing_reranker_is_reported_not_pretended(kb: Container, tmp_path: Path) -> None:
    assert load_reranker(str(tmp_path / "no-such-model"), enabled=True) is None
    r = _pipeline(kb, reranker=None, rerank_wanted=True).search("annual leave", flt=EVERYTHING, top_k=3)
    assert not r.reranked
    assert r.timings["rerank_unavailable"] == 1.0 and "rerank_ms" not in r.timings
    assert r.hits[0].score_kind == "weighted"


def test_cosine_threshold_turns_weak_hits_into_no_relevant_context(kb: Container) -> None:
    relevant = _pipeline(kb, thresholds=RelevanceThresholds.off(cosine=0.3)).search(
        "How many days of annual leave?", flt=EVERYTHING, top_k=3
    )
    assert relevant.relevance.kind == "cosine" and relevant.relevance.value is not None
    assert relevant.relevance.value > 0.3 and relevant.sources and not relevant.no_relevant_context
    off_topic = _pipeline(kb, thresholds=RelevanceThresholds.off(cosine=0.3)).search(
        "photosynthesis in tropical algae", flt=EVERYTHING, top_k=3
    )
    assert off_topic.hits, "search still finds something"
    assert off_topic.relevance.value is not None and off_topic.relevance.value < 0.3
    assert off_topic.no_relevant_context and off_topic.sources == []


def test_bm25_only_chinese_queries_use_lexical_coverage(kb: Container) -> None:
    pipeline = _pipeline(kb, thresholds=RelevanceThresholds.off(lexical=0.5))
    hit = pipeline.search("报销单要在多少天内提交？", flt=EVERYTHING, top_k=3)
    assert hit.mode == "bm25" and hit.relevance.kind == "lexical"
    assert hit.relevance.value is not None and hit.relevance.value >= 0.5 and hit.sources
    miss = pipeline.search("报销单的颜色是什么？年假", flt=EVERYTHING, top_k=3)
    assert miss.relevance.kind == "lexical"
    assert miss.relevance.value is not None and miss.relevance.value < hit.relevance.value


def test_answer_service_refuses_when_nothing_is_relevant(tmp_path: Path) -> None:
    import asyncio

    from app.answers.service import Question

    home = tmp_path / "home"
    settings = Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False},  # type: ignore[arg-type]
        retrieval={"min_relevance": {"cosine": 0.99}},  # type: ignore[arg-type]
    )  # fmt: skip
    c = Container(settings)
    try:
        chunk = Chunk(chunk_id="c1", doc_id="leave.md", text=TEXTS[0][1], title="leave")
        c.store.upsert("default", [chunk], c.embedder.embed([chunk.text], "passage"))
        c.store.flush("default")
        answer = asyncio.run(c.answers.ask(Question(access=ALL, text="What is the capital of France?")))
        assert answer.refused and answer.sources == [] and answer.message == "no relevant context found"
    finally:
        c.store._client.close()


def test_context_is_budgeted_in_the_generators_tokens(kb: Container, tiny_cross_encoder: Path, tmp_path: Path) -> None:
    from retrieval.context import llm_token_counter

    assert llm_token_counter(str(tmp_path / "no-model")) is None  # e.g. a remote model name: embedder counts
    count = llm_token_counter(str(tiny_cross_encoder))  # any local folder with tokenizer files
    assert count is not None and count("annual leave") == 2
    # A counter that sees every character as a token halves what fits compared with a word counter.
    words = _pipeline(kb, context_tokens=12, count_tokens=lambda t: len(t.split())).search(
        "annual leave", flt=EVERYTHING, top_k=5
    )
    chars = _pipeline(kb, context_tokens=12, count_tokens=len).search("annual leave", flt=EVERYTHING, top_k=5)
    assert sum(len(s.text) for s in chars.sources) < sum(len(s.text) for s in words.sources)
