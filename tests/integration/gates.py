"""Deterministic interleavings for ingestion tests: a wrapper around the real embedder that pauses (or
fails) the embedding call of chosen texts, so that a test can act while a worker is mid-file."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from app.container import Container


class Gate:
    """Pauses the first embedding call whose texts contain `marker` until `go` is set."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.reached = threading.Event()
        self.go = threading.Event()
        self._used = False

    def check(self, texts: Sequence[str]) -> None:
        if self._used or not any(self.marker in t for t in texts):
            return
        self._used = True
        self.reached.set()
        assert self.go.wait(300), "the test never released the gate"


class GatedEmbedder:
    def __init__(self, real: Any) -> None:
        self._real = real
        self.gates: list[Gate] = []
        self.explode: set[str] = set()  # markers whose texts make the embedding call fail
        self.delay_s = 0.0  # a slower model: each call takes this much longer

    def embed(self, texts: Sequence[str], kind: Any) -> list[list[float]]:
        if self.delay_s and kind == "passage":
            time.sleep(self.delay_s)
        for gate in self.gates:
            gate.check(texts)
        for marker in self.explode:
            if any(marker in t for t in texts):
                raise RuntimeError(f"embedding failed on {marker}")
        return self._real.embed(texts, kind)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def gate_embedder(container: Container, real: Any | None = None) -> GatedEmbedder:
    """Give `container` a gated embedder (around `real`, or the container's own MiniLM)."""
    gated = GatedEmbedder(real if real is not None else container.embedder)
    container.__dict__["embedder"] = gated
    return gated


def gated(container: Container, marker: str) -> Gate:
    gate = Gate(marker)
    container.embedder.gates.append(gate)  # type: ignore[attr-defined]
    return gate


def in_thread(target: Any, *args: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target(*args)
        except BaseException as exc:  # the test asserts on it
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def assert_store_matches_registry(c: Container, kb: str) -> None:
    """Only published versions have chunks, exactly their recorded count, and nothing else is stored."""
    c.versions.purge(kb, grace_s=0)
    total = 0
    for doc in c.registry.documents(kb, include_deleted=True):
        stored = c.store.document_chunks(kb, doc.doc_id)
        current = c.registry.current_version(kb, doc.doc_id)
        if current is None:
            assert stored == [], (doc.doc_id, doc.status, {ch.version for ch in stored})
            continue
        ids = [ch.chunk_id for ch in stored]
        assert len(ids) == len(set(ids)) == current.chunk_count, doc.doc_id
        assert {ch.version for ch in stored} == {current.version}, doc.doc_id
        total += current.chunk_count
    assert c.store.count(kb) == total
    assert c.registry.hidden_versions(kb) == []
