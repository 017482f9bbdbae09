"""The Reranker contract, run against FakeReranker and CrossEncoderReranker (a tiny, randomly initialised
BERT cross-encoder built by the `tiny_cross_encoder` fixture: real loading and scoring code)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.protocols import Reranker
from core.types import Chunk, ScoredChunk

QUERY = "How many days of annual leave do new employees get?"
TEXTS = [
    "Annual leave: new employees get 20 days of paid annual leave per calendar year.",
    "Unused annual leave may be carried over until the end of March.",
    "Expense reports must be submitted within 30 days with receipts attached.",
    "To reset your VPN password, open the self-service portal and choose Reset.",
    "报销单必须在30天内提交，并附上发票。",
    "Salary payments are made on the 25th of each month.",
]
CANDIDATES = [
    ScoredChunk(chunk=Chunk(chunk_id=f"c{i}", doc_id=f"d{i}.md", text=t), score=1.0 - i / 10, score_kind="weighted")
    for i, t in enumerate(TEXTS)
]


@pytest.fixture(
    scope="module",
    params=[
        "fake",
        pytest.param("cross-encoder", marks=pytest.mark.integration),
        pytest.param("http-tei", marks=pytest.mark.integration),
        pytest.param("http-cohere", marks=pytest.mark.integration),
    ],
)
def reranker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reranker]:
    if request.param == "fake":
        from tests.fakes import FakeReranker

        yield FakeReranker()
        return
    if request.param.startswith("http-"):
        # A real rerank service process, in each of the two wire formats kb speaks.
        from retrieval.http_reranker import HTTPReranker
        from tests.rerank_server import running_rerank_server

        protocol = request.param.removeprefix("http-")
        log = tmp_path_factory.mktemp("rerank") / "server.log"
        with running_rerank_server(protocol, log) as server:
            client = HTTPReranker(server.base_url, model="tiny", protocol=protocol)  # type: ignore[arg-type]
            yield client
            client.close()
        return
    from retrieval.reranker import CrossEncoderReranker

    folder: Path = request.getfixturevalue("tiny_cross_encoder")
    yield CrossEncoderReranker(str(folder), device="cpu")


def test_it_is_a_reranker(reranker: Reranker) -> None:
    assert isinstance(reranker, Reranker)


@pytest.mark.parametrize("top_k", [1, 3, len(TEXTS), len(TEXTS) + 5])
def test_at_most_top_k_candidates_best_first_as_probabilities(reranker: Reranker, top_k: int) -> None:
    hits = reranker.rerank(QUERY, CANDIDATES, top_k)
    assert len(hits) == min(top_k, len(CANDIDATES))
    assert {h.score_kind for h in hits} == {"rerank"}
    assert all(0.0 <= h.score <= 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hits_are_the_candidates_rescored_not_new_chunks(reranker: Reranker) -> None:
    hits = reranker.rerank(QUERY, CANDIDATES, len(CANDIDATES))
    assert sorted(h.chunk.chunk_id for h in hits) == sorted(c.chunk.chunk_id for c in CANDIDATES)
    by_id = {c.chunk.chunk_id: c.chunk for c in CANDIDATES}
    assert all(h.chunk == by_id[h.chunk.chunk_id] for h in hits)


def test_top_k_keeps_the_best_of_the_full_ranking(reranker: Reranker) -> None:
    full = reranker.rerank(QUERY, CANDIDATES, len(CANDIDATES))
    head = reranker.rerank(QUERY, CANDIDATES, 2)
    assert [h.score for h in head] == pytest.approx([h.score for h in full[:2]], abs=1e-6)


def test_scores_do_not_depend_on_the_candidates_order(reranker: Reranker) -> None:
    forward = {h.chunk.chunk_id: h.score for h in reranker.rerank(QUERY, CANDIDATES, len(CANDIDATES))}
    backward = {h.chunk.chunk_id: h.score for h in reranker.rerank(QUERY, CANDIDATES[::-1], len(CANDIDATES))}
    assert forward.keys() == backward.keys()
    for chunk_id, score in forward.items():
        assert backward[chunk_id] == pytest.approx(score, abs=1e-5)


def test_no_candidates_no_hits(reranker: Reranker) -> None:
    assert reranker.rerank(QUERY, [], 5) == []


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["tei", "cohere"])
def test_the_service_ranks_by_its_scores_and_a_failing_service_is_reported(protocol: str, tmp_path: Path) -> None:
    from core.protocols import RerankerUnavailable
    from retrieval.http_reranker import HTTPReranker
    from tests.rerank_server import FAIL_MARKER, running_rerank_server

    with running_rerank_server(protocol, tmp_path / "server.log") as server:
        client = HTTPReranker(server.base_url, protocol=protocol)  # type: ignore[arg-type]
        # The lexical scorer puts the passage holding the query's words first, whatever the input order.
        best = client.rerank("carried over March", CANDIDATES[::-1], 2)
        assert best[0].chunk.chunk_id == "c1" and best[0].score > best[1].score
        with pytest.raises(RerankerUnavailable):
            client.rerank(f"{FAIL_MARKER} leave", CANDIDATES, 3)
        client.close()
    # The service gone: an error the pipeline reports, never a silent "reranked".
    with pytest.raises(RerankerUnavailable):
        HTTPReranker(server.base_url, protocol=protocol, retries=0).rerank(QUERY, CANDIDATES, 3)  # type: ignore[arg-type]
