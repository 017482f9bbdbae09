from __future__ import annotations

from core.text import detect_language
from core.types import Chunk, ScoredChunk
from retrieval.context import assemble_context


def test_detect_language() -> None:
    assert detect_language("报销需要在多少天内提交？") == "zh"
    assert detect_language("VPN 密码怎么重置？") == "zh"
    assert detect_language("How many days of annual leave do new employees get?") == "en"
    assert detect_language("What does 报销 mean in this policy?") == "en"


def hit(doc: str, ordinal: int, text: str, score: float) -> ScoredChunk:
    chunk = Chunk(chunk_id=f"{doc}-{ordinal}", doc_id=doc, ordinal=ordinal, text=text, title=doc.upper())
    return ScoredChunk(chunk=chunk, score=score)


def count(text: str) -> int:
    return len(text.split())


def test_context_dedupes_merges_neighbours_and_numbers_sources() -> None:
    hits = [
        hit("a", 3, "alpha three", 0.9),
        hit("b", 1, "bravo one", 0.8),
        hit("a", 4, "alpha four", 0.7),
        hit("c", 1, "Bravo   ONE", 0.6),  # same text as b-1
    ]
    sources = assemble_context(hits, count_tokens=count, budget_tokens=100)
    assert [s.index for s in sources] == [1, 2]
    assert sources[0].text == "alpha three\nalpha four"
    assert sources[1].hit.chunk.doc_id == "b"


def test_context_fits_the_token_budget() -> None:
    hits = [hit("a", i * 2, f"word{i} " * 40, 1.0 - i / 10) for i in range(5)]
    sources = assemble_context(hits, count_tokens=count, budget_tokens=100)
    assert len(sources) == 2
    assert sum(count(s.text) for s in sources) <= 100


def test_an_oversized_best_chunk_is_cut_not_dropped() -> None:
    sources = assemble_context([hit("a", 0, "word " * 500, 1.0)], count_tokens=count, budget_tokens=50)
    assert len(sources) == 1 and count(sources[0].text) <= 60


def test_context_budget_follows_the_model_window() -> None:
    from retrieval.context import PROMPT_OVERHEAD_TOKENS, context_budget

    assert context_budget(32768, 512, 1000) == 1000  # a large window: the configured budget
    assert context_budget(2048, 384, 4000) == 2048 - 384 - PROMPT_OVERHEAD_TOKENS  # a small one caps it
    assert context_budget(512, 500, 1000) == 64
