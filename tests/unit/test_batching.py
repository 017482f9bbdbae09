"""The Batcher alone, with an in-memory embedder and store: batches shared across files, writes overlapping
embedding, per-file completion and failure. The real models and Milvus run it in tests/integration."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from core.types import Chunk, TextKind
from ingest.batching import Batcher, Completed, Failed, Outcome, Stored


def chunks(doc: str, n: int) -> list[Chunk]:
    return [Chunk(chunk_id=Chunk.make_id(doc, 1, i), doc_id=doc, ordinal=i, text=f"{doc} part {i}") for i in range(n)]


class Embedder:
    """Vectors from text length; fails a batch holding a text that contains `poison`."""

    def __init__(self, poison: str = "") -> None:
        self.calls: list[list[str]] = []
        self.poison = poison
        self.called = threading.Event()

    def embed(self, texts: Sequence[str], kind: TextKind) -> list[list[float]]:
        assert kind == "passage"
        self.calls.append(list(texts))
        self.called.set()
        if self.poison and any(self.poison in t for t in texts):
            raise RuntimeError("embedding failed")
        return [[float(len(t)), 1.0] for t in texts]


class Store:
    def __init__(self, fail_doc: str = "") -> None:
        self.rows: dict[str, Chunk] = {}
        self.upserts: list[list[str]] = []
        self.flushes = 0
        self.fail_doc = fail_doc

    def upsert(self, kb: str, items: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int:
        assert len(items) == len(vectors)
        if self.fail_doc and any(c.doc_id == self.fail_doc for c in items):
            raise RuntimeError("insert failed")
        self.upserts.append([c.doc_id for c in items])
        self.rows.update({c.chunk_id: c for c in items})
        return len(items)

    def flush(self, kb: str) -> None:
        self.flushes += 1


def feed(batcher: Batcher, key: int, items: list[Chunk]) -> list[Outcome]:
    """What the pipeline does for one file: open, add, write every full batch, close unless it failed."""
    batcher.open_file(key)
    batcher.add(key, items)
    out: list[Outcome] = []
    while batcher.full:
        out += batcher.write_batch()
    if any(isinstance(o, Failed) and o.key == key for o in out):
        return out
    return out + batcher.close_file(key)


def test_consecutive_small_files_share_batches_and_complete_in_order() -> None:
    embedder, store = Embedder(), Store()
    out: list[Outcome] = []
    with Batcher(embedder, store, "kb", batch_size=4) as batcher:  # type: ignore[arg-type]
        for key, doc in enumerate(["a", "b", "c"]):
            out += feed(batcher, key, chunks(doc, 3))
        out += batcher.drain()
    assert [len(c) for c in embedder.calls] == [4, 4, 1]
    assert store.upserts == [["a", "a", "a", "b"], ["b", "b", "c", "c"], ["c"]]
    completed = [o for o in out if isinstance(o, Completed)]
    assert [(o.key, o.chunks) for o in completed] == [(0, 3), (1, 3), (2, 3)]
    stored = [(o.key, o.chunks) for o in out if isinstance(o, Stored)]
    assert stored == [(0, 3), (1, 1), (1, 2), (2, 2), (2, 1)]
    # A file completes only after every chunk of it is stored, and each completion follows a flush.
    assert out.index(completed[0]) > out.index(next(o for o in out if isinstance(o, Stored) and o.key == 0))
    assert store.flushes == 3 and not [o for o in out if isinstance(o, Failed)]


def test_writing_a_batch_overlaps_embedding_the_next() -> None:
    embedder = Embedder()
    second_embed_started = threading.Event()
    overlapped: list[bool] = []

    class SlowStore(Store):
        def upsert(self, kb: str, items: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int:
            if not overlapped:
                # The first insert is still running when the second batch gets embedded, or never.
                overlapped.append(second_embed_started.wait(timeout=10))
            return super().upsert(kb, items, vectors)

    class SignallingEmbedder(Embedder):
        def embed(self, texts: Sequence[str], kind: TextKind) -> list[list[float]]:
            if self.calls:
                second_embed_started.set()
            return super().embed(texts, kind)

    embedder = SignallingEmbedder()
    store = SlowStore()
    with Batcher(embedder, store, "kb", batch_size=2) as batcher:  # type: ignore[arg-type]
        out = feed(batcher, 0, chunks("a", 4)) + batcher.drain()
    assert overlapped == [True]
    assert [(o.key, o.chunks) for o in out if isinstance(o, Completed)] == [(0, 4)]


def test_an_embedding_failure_fails_the_files_in_that_batch_only() -> None:
    embedder, store = Embedder(poison="b part 2"), Store()
    with Batcher(embedder, store, "kb", batch_size=3) as batcher:  # type: ignore[arg-type]
        out = feed(batcher, 0, chunks("a", 2))
        out += feed(batcher, 1, chunks("b", 4))  # batch 2: b1 b2 b3 holds the poison
        out += feed(batcher, 2, chunks("c", 2))
        out += batcher.drain()
    failed = [o for o in out if isinstance(o, Failed)]
    assert [(o.key, str(o.error)) for o in failed] == [(1, "embedding failed")]
    assert [(o.key, o.chunks) for o in out if isinstance(o, Completed)] == [(0, 2), (2, 2)]
    # Only the chunk of b that shared a batch with a before the failure reached the store.
    assert sorted(c.doc_id for c in store.rows.values()) == ["a", "a", "b", "c", "c"]


def test_a_write_failure_fails_its_files_and_drops_what_they_still_had_queued() -> None:
    embedder, store = Embedder(), Store(fail_doc="b")
    with Batcher(embedder, store, "kb", batch_size=2) as batcher:  # type: ignore[arg-type]
        out = feed(batcher, 0, chunks("b", 5)) + feed(batcher, 1, chunks("c", 1)) + batcher.drain()
    assert [o.key for o in out if isinstance(o, Failed)] == [0]
    assert [(o.key, o.chunks) for o in out if isinstance(o, Completed)] == [(1, 1)]
    assert {c.doc_id for c in store.rows.values()} == {"c"}
    # After b's first batch failed, none of its later chunks were sent.
    assert store.upserts == [["c"]]


def test_a_file_without_chunks_completes_empty_without_a_flush() -> None:
    store = Store()
    with Batcher(Embedder(), store, "kb", batch_size=4) as batcher:  # type: ignore[arg-type]
        out = feed(batcher, 0, [])
    assert out == [Completed(0, 0, 0.0)]
    assert store.flushes == 0


def test_discard_lets_chunks_in_flight_land_and_drops_the_queued_ones() -> None:
    store = Store()
    with Batcher(Embedder(), store, "kb", batch_size=2) as batcher:  # type: ignore[arg-type]
        batcher.open_file(0)
        batcher.add(0, chunks("a", 3))
        out = batcher.write_batch()  # a0 a1 in flight, a2 queued
        out += batcher.discard(0)
        # When discard returns, what was in flight is in the store: a rollback now deletes all of it.
        assert sorted(store.rows) == sorted(c.chunk_id for c in chunks("a", 2))
        out += batcher.drain()
    assert [(o.key, o.chunks) for o in out if isinstance(o, Stored)] == [(0, 2)]
    assert not [o for o in out if isinstance(o, Completed | Failed)]
    assert store.upserts == [["a", "a"]]


def test_a_file_key_is_opened_once() -> None:
    with Batcher(Embedder(), Store(), "kb", batch_size=2) as batcher:  # type: ignore[arg-type]
        batcher.open_file(0)
        with pytest.raises(ValueError, match="already open"):
            batcher.open_file(0)
