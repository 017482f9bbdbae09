"""OpenAIEmbedder against a real OpenAI-compatible server process (tests/embed_server.py: MiniLM, vectors
not normalised, returned in reverse order): same vectors as the in-process model, batching, failures.
The Embedder contract itself runs in tests/contracts/test_embedder_contract.py."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.container import Container
from app.settings import EmbeddingSettings, RerankerSettings, Settings
from core.procs import free_port
from core.protocols import EmbedderUnavailable
from retrieval.embedder import SentenceTransformerEmbedder, resolve_model_location
from retrieval.openai_embedder import OpenAIEmbedder, estimate_tokens
from tests.conftest import EVERYTHING
from tests.embed_server import FAIL_MARKER, MODEL, SLOW_MARKER, SLOW_S, EmbedServer

pytestmark = pytest.mark.integration

TEXTS = [
    "Employees get 20 days of paid annual leave per year.",
    "Reset a forgotten VPN password in the self-service portal.",
    "Expense claims must be filed within 30 days of the purchase.",
    "员工每年享有二十天带薪年假。",
    "x",
]


@pytest.fixture(scope="module")
def local() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(MODEL, device="cpu")


@pytest.fixture
def remote(embed_server: EmbedServer) -> Iterator[OpenAIEmbedder]:
    embedder = OpenAIEmbedder(base_url=embed_server.base_url, model=MODEL, batch_size=64, timeout_s=30)
    yield embedder
    embedder.close()


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _new_batches(server: EmbedServer, before: int) -> list[int]:
    return server.batches()[before:]


def test_the_server_does_not_normalise(embed_server: EmbedServer) -> None:
    # Guards the normalisation test: if the server sent unit vectors, the client's normalising would go unchecked.
    response = httpx.post(f"{embed_server.base_url}/embeddings", json={"model": MODEL, "input": TEXTS}, timeout=30)
    norms = [math.sqrt(sum(x * x for x in item["embedding"])) for item in response.json()["data"]]
    assert all(abs(n - 1.0) > 0.4 for n in norms), norms


def test_learns_the_dimension_and_profile_at_start(remote: OpenAIEmbedder) -> None:
    assert remote.dimension == 384
    assert remote.profile.name == "plain" and remote.languages == frozenset({"en"})
    assert remote.max_seq_length == 256


def test_the_vectors_are_the_in_process_models(remote: OpenAIEmbedder, local: SentenceTransformerEmbedder) -> None:
    for kind in ("query", "passage"):
        for a, b in zip(remote.embed(TEXTS, kind), local.embed(TEXTS, kind), strict=True):
            assert _cos(a, b) > 0.999


def test_batches_by_batch_size_and_keeps_the_order(
    embed_server: EmbedServer, remote: OpenAIEmbedder, local: SentenceTransformerEmbedder
) -> None:
    texts = [f"Policy note {i}: item {i * 7 % 13} applies to team {i % 5}." for i in range(150)]
    before = len(embed_server.batches())
    vectors = remote.embed(texts, "passage")
    assert _new_batches(embed_server, before) == [64, 64, 22]
    expected = local.embed(texts, "passage")
    assert len(vectors) == 150
    for i, (a, b) in enumerate(zip(vectors, expected, strict=True)):
        assert _cos(a, b) > 0.999, i


def test_an_unreachable_server_fails_at_start_naming_it() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    started = time.monotonic()
    with pytest.raises(EmbedderUnavailable, match=re.escape(url)):
        OpenAIEmbedder(base_url=url, model=MODEL, retries=2, backoff_s=0.05, timeout_s=5)
    assert time.monotonic() - started < 5  # two short backoffs, no SDK retries


def test_a_server_error_raises_and_is_not_retried(embed_server: EmbedServer, remote: OpenAIEmbedder) -> None:
    before = len(embed_server.batches())
    with pytest.raises(EmbedderUnavailable, match="500"):
        remote.embed(["fine", f"broken {FAIL_MARKER}"], "passage")
    assert _new_batches(embed_server, before) == [2]


def test_a_timeout_raises_and_is_not_retried(embed_server: EmbedServer) -> None:
    impatient = OpenAIEmbedder(base_url=embed_server.base_url, model=MODEL, timeout_s=1.0, retries=3)
    before = len(embed_server.batches())
    started = time.monotonic()
    with pytest.raises(EmbedderUnavailable, match="unavailable"):
        impatient.embed([f"slow {SLOW_MARKER}"], "query")
    assert time.monotonic() - started < SLOW_S
    assert _new_batches(embed_server, before) == [1]
    impatient.close()


def test_tokens_are_counted_with_the_models_tokenizer(
    remote: OpenAIEmbedder, local: SentenceTransformerEmbedder
) -> None:
    for text in [*TEXTS, ""]:
        assert remote.count_tokens(text) == local.count_tokens(text)


def test_a_served_alias_counts_with_the_named_tokenizer_or_estimates(
    embed_server: EmbedServer, local: SentenceTransformerEmbedder
) -> None:
    # The test server answers any model name, as a server with an alias (--served-model-name) would.
    named = OpenAIEmbedder(
        base_url=embed_server.base_url, model="kb-embed", tokenizer=resolve_model_location(MODEL), profile="plain"
    )
    estimated = OpenAIEmbedder(base_url=embed_server.base_url, model="kb-embed", profile="plain")
    for text in TEXTS:
        assert named.count_tokens(text) == local.count_tokens(text)
        # The estimate over-counts, so chunks sized by it stay below what the model reads.
        assert estimated.count_tokens(text) == estimate_tokens(text) >= local.count_tokens(text)
    named.close()
    estimated.close()


def test_a_tokenizer_that_cannot_be_loaded_is_an_error(embed_server: EmbedServer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tokenizer"):
        OpenAIEmbedder(base_url=embed_server.base_url, model=MODEL, tokenizer=str(tmp_path / "missing"))


def test_the_container_ingests_and_searches_through_the_server(embed_server: EmbedServer, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        embedding=EmbeddingSettings(base_url=embed_server.base_url, max_seq_length=128, batch_size=8),
        reranker=RerankerSettings(enabled=False),
    )
    container = Container(settings)
    embedder = container.embedder
    assert isinstance(embedder, OpenAIEmbedder)
    assert embedder.base_url == embed_server.base_url
    assert (embedder.dimension, embedder.max_seq_length, embedder.batch_size) == (384, 128, 8)
    doc = tmp_path / "docs" / "leave.md"
    doc.parent.mkdir()
    doc.write_text("# Leave\n\n" + " ".join(TEXTS[:3]) + "\n", encoding="utf-8")
    try:
        results = container.ingest.ingest_paths([doc], kb="default")
        assert [r.status for r in results] == ["indexed"], results
        # Dense only: the vectors in Milvus (dimension learned from the server) are what finds the chunk.
        found = container.query.search("How do I reset my VPN password?", flt=EVERYTHING, top_k=1, mode="dense")
        assert found.hits and found.hits[0].chunk.doc_id == "leave.md", found.hits
        assert "VPN password" in found.hits[0].chunk.text
    finally:
        container.store._client.close()
        embedder.close()
