from __future__ import annotations

from pathlib import Path

import pytest

from ingest.chunking import StructuredChunker, is_heading
from ingest.loaders import Element, LoadedDocument


def words(text: str) -> int:
    # One token per word or per Chinese character: close enough to a subword tokenizer for sizing tests.
    return sum(len(w) if any("\u4e00" <= c <= "\u9fff" for c in w) else 1 for w in text.split())


def doc(*elements: Element, title: str = "Handbook") -> LoadedDocument:
    return LoadedDocument(path=Path("handbook.md"), title=title, elements=list(elements))


def test_heading_starts_a_chunk_and_is_carried_in_the_text() -> None:
    d = doc(
        Element("Handbook", "Title"),
        Element("Annual leave", "Title"),
        Element("New employees get 15 days.", "NarrativeText"),
        Element("Sick leave", "Title"),
        Element("Ten days of sick leave.", "NarrativeText"),
    )
    chunks = StructuredChunker(words, chunk_tokens=100, overlap_tokens=10).split(d)
    assert [c.section for c in chunks] == ["Annual leave", "Sick leave"]
    assert chunks[0].text == "Annual leave\nNew employees get 15 days."
    assert "Sick" not in chunks[0].text


def test_chunks_respect_the_token_size_and_end_at_sentences() -> None:
    sentence = "This sentence has exactly eight words in it. "
    d = doc(Element(sentence * 30, "NarrativeText"))
    chunks = StructuredChunker(words, chunk_tokens=40, overlap_tokens=8).split(d)
    assert len(chunks) > 5
    for c in chunks:
        assert c.token_count <= 40
        assert c.text.rstrip().endswith(".")


def test_chinese_sentence_boundaries() -> None:
    text = "员工应在费用发生后三十天内提交报销申请。" * 12
    d = doc(Element(text, "NarrativeText"), title="报销制度")
    chunks = StructuredChunker(words, chunk_tokens=60, overlap_tokens=0).split(d)
    assert len(chunks) >= 4
    assert all(c.text.endswith("。") for c in chunks)
    assert "".join(c.text for c in chunks) == text


def test_a_new_page_starts_a_new_chunk_with_its_page_number() -> None:
    d = doc(
        Element("Travel", "Title", page=1),
        Element("Book flights in the portal.", "NarrativeText", page=1),
        Element("Meals are 60 dollars a day.", "NarrativeText", page=2),
    )
    chunks = StructuredChunker(words, chunk_tokens=100, overlap_tokens=0).split(d)
    assert [(c.page, c.section) for c in chunks] == [(1, "Travel"), (2, "Travel")]
    assert "Meals" in chunks[1].text and "Meals" not in chunks[0].text


def test_sentence_like_titles_are_not_headings() -> None:
    assert is_heading(Element("Annual leave", "Title"))
    assert not is_heading(Element("新员工入职第一年享有15天带薪年假。", "Title"))
    assert not is_heading(Element("Annual leave", "NarrativeText"))


def test_overlap_must_be_smaller_than_the_chunk() -> None:
    with pytest.raises(ValueError, match="overlap"):
        StructuredChunker(words, chunk_tokens=10, overlap_tokens=10)
