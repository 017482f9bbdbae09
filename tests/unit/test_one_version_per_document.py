"""A search that races a version switch: the store's filter was read before the switch, so its hits can hold
a document in two versions; the registry read after the search settles which one readers see."""

from __future__ import annotations

from core.types import Chunk, ScoredChunk
from retrieval.pipeline import one_version_per_document


def hit(doc_id: str, version: int, ordinal: int = 0) -> ScoredChunk:
    chunk = Chunk(chunk_id=Chunk.make_id(doc_id, version, ordinal), doc_id=doc_id, version=version, text="x")
    return ScoredChunk(chunk=chunk, score=1.0 - ordinal / 10)


def versions(hits: list[ScoredChunk]) -> list[tuple[str, int]]:
    return [(h.chunk.doc_id, h.chunk.version) for h in hits]


def test_a_version_still_being_written_is_dropped_beside_the_current_one() -> None:
    hits = [hit("rota", 3, 0), hit("rota", 2, 0), hit("other", 1, 0), hit("rota", 3, 1)]
    assert versions(one_version_per_document(hits, {("rota", 3)})) == [("rota", 2), ("other", 1)]


def test_the_replaced_version_is_dropped_once_the_new_one_is_published() -> None:
    hits = [hit("rota", 2, 0), hit("rota", 3, 0), hit("rota", 2, 1)]
    assert versions(one_version_per_document(hits, {("rota", 2)})) == [("rota", 3)]


def test_a_document_found_in_one_version_keeps_it_through_the_grace_period() -> None:
    hits = [hit("rota", 2, 0), hit("rota", 2, 1)]
    assert versions(one_version_per_document(hits, {("rota", 2)})) == [("rota", 2), ("rota", 2)]


def test_a_document_deleted_meanwhile_in_two_versions_shows_neither() -> None:
    hits = [hit("rota", 2, 0), hit("rota", 3, 0), hit("other", 1, 0)]
    assert versions(one_version_per_document(hits, {("rota", 2), ("rota", 3)})) == [("other", 1)]
