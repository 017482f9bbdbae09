"""Contextual chunk headers (core/chunk_context.py) and small-to-big context (retrieval/context.py)."""

from __future__ import annotations

from collections.abc import Sequence

from core.chunk_context import HEADER_END, chunk_header, store_text, stored_body, with_header
from core.types import Chunk, ScoredChunk
from ingest.pipeline import embedded_text
from retrieval.context import assemble_context, continuation


def chunk(text: str, *, title: str = "", section: str = "", ordinal: int = 0, page: int | None = None) -> Chunk:
    return Chunk(
        chunk_id=f"d-{ordinal}", doc_id="d.md", ordinal=ordinal, text=text, title=title, section=section, page=page
    )


# -- headers ----------------------------------------------------------------------------------------


def test_the_header_is_title_and_heading_path_not_repeated_from_the_text() -> None:
    # The chunker starts a chunk with its heading path: only the title is missing from it.
    c = chunk("Leave > Carry-over\nUnused days lapse in March.", title="Staff handbook", section="Leave > Carry-over")
    assert chunk_header(c) == "Staff handbook"
    # A heading path the text does not begin with (a table chunk, a format without headings in the text).
    assert chunk_header(chunk("Unused days lapse.", title="Handbook", section="Leave")) == "Handbook > Leave"
    # A title that is the heading path's first heading is said once.
    assert chunk_header(chunk("Unused days lapse.", title="Leave", section="Leave > Carry-over")) == (
        "Leave > Carry-over"
    )
    assert chunk_header(chunk("Plain text.")) == ""
    assert with_header(chunk("Body.", title="T")) == "T\nBody."
    assert with_header(chunk("Body.")) == "Body."


def test_what_is_embedded_follows_the_setting() -> None:
    c = chunk("Unused days lapse in March.", title="Staff handbook")
    assert embedded_text(c, header=True) == "Staff handbook\nUnused days lapse in March."
    assert embedded_text(c, header=False) == c.text


def test_the_store_text_gives_back_the_chunk_text_alone() -> None:
    c = chunk("Unused days lapse in March.", title="Staff handbook", section="Leave")
    indexed = store_text(c, header=True)
    assert indexed.startswith("Staff handbook > Leave\n") and "Staff" not in stored_body(indexed)
    assert stored_body(indexed) == c.text
    assert store_text(c, header=False) == c.text and stored_body(c.text) == c.text
    # A separator inside a document cannot cut its text short on reading.
    odd = chunk(f"a{HEADER_END}b", title="T")
    assert stored_body(store_text(odd, header=True)) == "a b"
    assert stored_body(store_text(odd, header=False)) == "a b"


# -- small-to-big -----------------------------------------------------------------------------------


def count(text: str) -> int:
    return len(text.split())


def hit(c: Chunk, score: float = 1.0) -> ScoredChunk:
    return ScoredChunk(chunk=c, score=score)


SECTION = "Leave"
DOC = [
    chunk("Intro\nThe handbook covers leave.", section="Intro", ordinal=0),
    chunk("Leave\nStaff get 20 days.", section=SECTION, ordinal=1),
    chunk("Leave\nUnused days lapse in March.", section=SECTION, ordinal=2),
    chunk("Leave\nPart-timers get a share.", section=SECTION, ordinal=3),
    chunk("Leave\nSick days are separate.", section=SECTION, ordinal=4, page=2),
]


def neighbours(asked: list[list[int]]):  # type: ignore[no-untyped-def]
    def fetch(c: Chunk, ordinals: Sequence[int]) -> list[Chunk]:
        asked.append(list(ordinals))
        return [d for d in DOC if d.ordinal in ordinals]

    return fetch


def test_a_hit_grows_into_its_section_and_page_and_is_cited_as_itself() -> None:
    asked: list[list[int]] = []
    sources = assemble_context(
        [hit(DOC[2])], count_tokens=count, budget_tokens=100, expand=2, neighbours=neighbours(asked)
    )
    assert asked == [[0, 1, 3, 4]]
    # Chunk 0 is another section, chunk 4 another page: neither joins. The heading is said once.
    assert [s.text for s in sources] == [
        "Leave\nStaff get 20 days.\nUnused days lapse in March.\nPart-timers get a share."
    ]
    assert sources[0].hit.chunk.chunk_id == DOC[2].chunk_id and sources[0].citation().page is None


def test_without_expansion_the_context_is_the_hits() -> None:
    asked: list[list[int]] = []
    sources = assemble_context(
        [hit(DOC[2])], count_tokens=count, budget_tokens=100, expand=0, neighbours=neighbours(asked)
    )
    assert asked == [] and [s.text for s in sources] == [DOC[2].text]


def test_expansion_stays_within_the_budget_nearest_first() -> None:
    # The hit costs 6 words; each neighbour adds 4 (its heading line is not repeated): room for one.
    sources = assemble_context([hit(DOC[2])], count_tokens=count, budget_tokens=10, expand=2, neighbours=neighbours([]))
    assert [s.text for s in sources] == ["Leave\nUnused days lapse in March.\nPart-timers get a share."]


def test_a_later_hit_already_in_an_expanded_source_is_not_repeated() -> None:
    other = chunk("Other\nExpense reports take 30 days.", section="Other", ordinal=0)
    other = other.model_copy(update={"doc_id": "e.md", "chunk_id": "e-0"})
    hits = [hit(DOC[2], 0.9), hit(DOC[3], 0.8), hit(other, 0.7)]
    sources = assemble_context(hits, count_tokens=count, budget_tokens=100, expand=1, neighbours=neighbours([]))
    assert [s.hit.chunk.chunk_id for s in sources] == [DOC[2].chunk_id, "e-0"]
    assert sources[0].text.count("Part-timers") == 1 and [s.index for s in sources] == [1, 2]


def test_the_overlap_two_chunks_share_is_read_once() -> None:
    before = "Leave\nStaff get 20 days of paid leave. Unused days lapse at the end of March."
    after = "Leave\nUnused days lapse at the end of March. Part-timers get a share."
    assert continuation(before, after, "Leave") == "Part-timers get a share."
    assert continuation("Something else entirely here.", after, "Leave") == after


def test_the_query_pipeline_expands_hits_with_neighbours_the_caller_may_read() -> None:
    from core.types import Access, SearchFilter
    from retrieval.pipeline import QueryPipeline
    from tests.fakes import FakeEmbedder, FakeVectorStore

    embedder = FakeEmbedder()
    store = FakeVectorStore(dimension=embedder.dimension)
    chunks = [d.model_copy(update={"acl_groups": ["staff"]}) for d in DOC]
    store.upsert("default", chunks, embedder.embed([c.text for c in chunks], "passage"))
    staff = SearchFilter(access=Access.groups(["staff"]))
    expanded = QueryPipeline(embedder=embedder, store=store, candidates=5, expand_chunks=1)
    r = expanded.search("lapse March", flt=staff, top_k=1, mode="bm25")
    assert [h.chunk.ordinal for h in r.hits] == [2]
    assert r.sources[0].text == "Leave\nStaff get 20 days.\nUnused days lapse in March.\nPart-timers get a share."
    assert r.sources[0].citation().chunk_id == DOC[2].chunk_id
    plain = QueryPipeline(embedder=embedder, store=store, candidates=5)
    assert plain.search("lapse March", flt=staff, top_k=1, mode="bm25").sources[0].text == DOC[2].text
    # A neighbour the caller may not read stays out, whatever the hit's own groups.
    store.update_access("default", "d.md", 1, ["board"], [])
    store.upsert("default", [chunks[2]], embedder.embed([chunks[2].text], "passage"))
    r = expanded.search("lapse March", flt=staff, top_k=1, mode="bm25")
    assert [s.text for s in r.sources] == [DOC[2].text]
