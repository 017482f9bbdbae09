"""An answer with valid and invalid markers, through the same path a model answer takes."""

from __future__ import annotations

import time

from app.answers.service import _Turn
from core.types import Chunk, ScoredChunk, Usage
from retrieval.context import Source
from retrieval.pipeline import Retrieval
from tests.support_scorer import support_scorer


def source(index: int, doc: str, page: int, text: str) -> Source:
    chunk = Chunk(chunk_id=f"{doc}-{page}", doc_id=doc, text=text, title=doc.title(), source=f"/docs/{doc}", page=page)
    return Source(index=index, hit=ScoredChunk(chunk=chunk, score=1.0 / index), text=text)


def turn() -> _Turn:
    sources = [
        source(1, "leave-policy.md", 1, "New employees get 15 days of annual leave."),
        source(2, "expense-policy.pdf", 2, "The daily meal allowance abroad is 60 EUR."),
        source(3, "it-security.docx", 4, "Passwords must be at least 14 characters long."),
    ]
    retrieval = Retrieval(question="q", language="en", mode="hybrid", hits=[s.hit for s in sources], sources=sources)
    return _Turn(time.perf_counter(), retrieval, "Not found in the knowledge base.", [], None, {}, support_scorer(None))


def test_only_valid_cited_sources_become_citations_with_document_page_and_snippet() -> None:
    answer = turn().final_answer(
        "New staff get 15 days [1][7]. Passwords need 14 characters [3]. Meals are free [0].",
        Usage(completion_tokens=9),
    )
    assert "[7]" not in answer.answer and "[0]" not in answer.answer
    assert [(c.index, c.doc_id, c.page) for c in answer.citations] == [
        (1, "leave-policy.md", 1),
        (3, "it-security.docx", 4),
    ]
    assert answer.citations[1].snippet.startswith("Passwords must be")
    assert len(answer.sources) == 3
    # The last sentence lost its only (invalid) marker: it cites nothing, so the answer is not grounded.
    assert [s.grounded for s in answer.sentences] == [True, True, False]
    assert not answer.grounded and not answer.refused
    assert answer.usage.completion_tokens == 9


def test_the_refusal_text_is_a_refusal_and_not_ungrounded() -> None:
    answer = turn().final_answer("Not found in the knowledge base.", Usage())
    assert answer.refused and answer.citations == [] and answer.sentences == []
