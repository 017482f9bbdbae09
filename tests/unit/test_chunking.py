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


def test_heading_path_follows_levels() -> None:
    d = doc(
        Element("Handbook", "Title", depth=0),
        Element("Leave", "Title", depth=1),
        Element("Annual", "Title", depth=2),
        Element("Fifteen days a year.", "NarrativeText"),
        Element("Sick", "Title", depth=2),
        Element("Ten days a year.", "NarrativeText"),
        Element("Travel", "Title", depth=1),
        Element("Book in the portal.", "NarrativeText"),
    )
    chunks = StructuredChunker(words, chunk_tokens=100, overlap_tokens=0).split(d)
    assert [c.section for c in chunks] == ["Leave > Annual", "Leave > Sick", "Travel"]
    assert chunks[0].text.startswith("Leave > Annual\n")


def test_table_chunks_repeat_the_header_and_never_split_a_row() -> None:
    rows = "".join(f"<tr><td>R{i}</td><td>value {i} with several words</td></tr>" for i in range(40))
    html = f"<table><tr><th>Key</th><th>Value</th></tr>{rows}</table>"
    d = doc(Element("Limits", "Title"), Element("table text", "Table", page=3, html=html))
    chunks = StructuredChunker(words, chunk_tokens=60, overlap_tokens=10).split(d)
    assert len(chunks) > 3
    seen = []
    for c in chunks:
        assert c.category == "Table" and c.page == 3 and c.section == "Limits"
        lines = c.text.splitlines()
        assert lines[1:3] == ["| Key | Value |", "| --- | --- |"]
        seen += [line for line in lines[3:]]
    assert seen == [f"| R{i} | value {i} with several words |" for i in range(40)]


def test_pipes_in_cells_are_escaped() -> None:
    html = "<table><tr><td>a|b</td><td>c</td></tr><tr><td>1</td><td>2</td></tr></table>"
    chunks = StructuredChunker(words, chunk_tokens=60, overlap_tokens=0).split(doc(Element("t", "Table", html=html)))
    assert chunks[0].text.splitlines()[0] == "| a\\|b | c |"


def test_slide_decks_keep_the_first_slide_title_as_its_section() -> None:
    # The deck's title is its first slide's title; when that slide holds only a table, the title must stay.
    elements = [
        Element("Warehouse capacity plan", "Title", page=1, depth=0),
        Element("Site Pallets", "Table", page=1, html="<table><tr><td>Site</td><td>Pallets</td></tr></table>"),
    ]
    chunker = StructuredChunker(words, chunk_tokens=100, overlap_tokens=10)
    as_document = chunker.session("Warehouse capacity plan").feed(elements)
    assert [c.section for c in as_document] == [""]
    as_slides = chunker.session("Warehouse capacity plan", title_is_section=True).feed(elements)
    assert [c.section for c in as_slides] == ["Warehouse capacity plan"]
    assert as_slides[0].text.startswith("Warehouse capacity plan\n| Site | Pallets |")


def test_garbled_titles_are_not_headings() -> None:
    assert not is_heading(Element("n u J", "Title"))
    assert is_heading(Element("员工手册", "Title"))
