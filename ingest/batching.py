"""Embed + write: chunks of consecutive files in full embedding batches, and which files are complete.

Many small files (one FAQ each) would otherwise embed a handful of chunks per call, which costs the CPU
about a third of its throughput, so the Batcher fills each batch across file boundaries. Writing batch N
to the store overlaps with embedding batch N+1 (one writer thread): the insert waits on Milvus (BM25
analysis, index updates) while the CPU embeds.

The Batcher owns the embedder and the sink and calls nothing else: every method returns what happened
(`Stored`, `Completed`, `Failed`, per file) and the caller acts on it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from core.protocols import Embedder, VectorStore
from core.text import detect_language
from core.types import Chunk


@dataclass(frozen=True)
class Stored:
    """`chunks` more chunks of file `key` are in the store; its share of the batch's time."""

    key: int
    chunks: int
    embed_ms: float
    index_ms: float


@dataclass(frozen=True)
class Completed:
    """File `key` is closed and all its chunks are written and flushed: it can be published."""

    key: int
    chunks: int  # 0: the file gave no text at all
    flush_ms: float


@dataclass(frozen=True)
class Failed:
    """Embedding, writing or flushing a batch with chunks of file `key` failed; the Batcher dropped the rest."""

    key: int
    error: Exception


Outcome = Stored | Completed | Failed


@dataclass
class _File:
    unwritten: int = 0  # queued or in flight
    written: int = 0
    closed: bool = False  # no more chunks will come


@dataclass(frozen=True)
class _Inflight:
    keys: list[int]  # the file of each chunk, in order
    future: Future[float]
    embed_s: float


class Batcher:
    def __init__(
        self, embedder: Embedder, store: VectorStore, kb: str, *, batch_size: int,
        text_of: Callable[[Chunk], str] = lambda c: c.text,
    ) -> None:  # fmt: skip
        self._embedder = embedder
        self._text_of = text_of  # what is embedded of a chunk
        self._store = store
        self._kb = kb
        self._size = batch_size
        self._files: dict[int, _File] = {}
        self._pending: list[tuple[int, Chunk]] = []
        self._inflight: _Inflight | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-index")

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._executor.shutdown(wait=True)

    # -- what the caller feeds ----------------------------------------------------------------------
    def open_file(self, key: int) -> None:
        if key in self._files:
            raise ValueError(f"file {key} is already open")
        self._files[key] = _File()

    def add(self, key: int, chunks: Sequence[Chunk]) -> None:
        """Queue chunks of an open file; nothing is embedded until `write_batch`."""
        self._files[key].unwritten += len(chunks)
        self._pending.extend((key, c) for c in chunks)

    @property
    def full(self) -> bool:
        """A whole batch is queued: time to call `write_batch`."""
        return len(self._pending) >= self._size

    def close_file(self, key: int) -> list[Outcome]:
        """No more chunks will come for `key`; it completes as soon as they are all written."""
        self._files[key].closed = True
        return self._complete()

    def discard(self, key: int) -> list[Outcome]:
        """Give up on `key` (its parsing failed): drop its queued chunks once any in flight have landed,
        so that a rollback afterwards deletes everything it wrote."""
        outcomes = self._settle()
        if key in self._files:
            del self._files[key]
            self._pending = [(k, c) for k, c in self._pending if k != key]
        return outcomes

    # -- the work -----------------------------------------------------------------------------------
    def write_batch(self) -> list[Outcome]:
        """Embed the next batch, wait for the previous write, then start writing this one."""
        batch, self._pending = self._pending[: self._size], self._pending[self._size :]
        if not batch:
            return self._settle()
        texts = [self._text_of(c) for _, c in batch]
        # The language of the very text embedded: where languages go to different models it names the
        # vector space, and must agree with how the embedder routed that text.
        batch = [
            (k, c.model_copy(update={"language": detect_language(text)}))
            for (k, c), text in zip(batch, texts, strict=True)
        ]
        t = time.perf_counter()
        try:
            vectors = self._embedder.embed(texts, "passage")
        except Exception as exc:  # noqa: BLE001 - the files in this batch fail and are rolled back; others go on
            return self._fail(_unique(k for k, _ in batch), exc)
        embed_s = time.perf_counter() - t
        outcomes = self._settle()
        # The previous write may have failed files of this batch too; their chunks must not be written.
        kept = [(i, k) for i, (k, _) in enumerate(batch) if k in self._files]
        if kept:
            chunks = [batch[i][1] for i, _ in kept]
            future = self._executor.submit(self._upsert, chunks, [vectors[i] for i, _ in kept])
            self._inflight = _Inflight([k for _, k in kept], future, embed_s)
        return outcomes

    def drain(self) -> list[Outcome]:
        """Write whatever is queued, wait for the last write, and complete the files it finished."""
        outcomes: list[Outcome] = []
        while self._pending:
            outcomes += self.write_batch()
        return outcomes + self._settle() + self._complete()

    def _upsert(self, chunks: list[Chunk], vectors: list[list[float]]) -> float:
        t = time.perf_counter()
        self._store.upsert(self._kb, chunks, vectors)
        return time.perf_counter() - t

    def _settle(self) -> list[Outcome]:
        """Wait for the batch being written; account for it and complete the files it finished."""
        if self._inflight is None:
            return []
        inflight, self._inflight = self._inflight, None
        try:
            index_s = inflight.future.result()
        except Exception as exc:  # noqa: BLE001 - the files in this batch fail and are rolled back; others go on
            return self._fail(_unique(inflight.keys), exc)
        outcomes: list[Outcome] = []
        n = len(inflight.keys)
        # Each file is charged its share of the shared batch's time.
        for key, count in Counter(inflight.keys).items():
            f = self._files[key]
            f.unwritten -= count
            f.written += count
            outcomes.append(Stored(key, count, inflight.embed_s * 1000 * count / n, index_s * 1000 * count / n))
        return outcomes + self._complete()

    def _complete(self) -> list[Outcome]:
        ready = [k for k, f in self._files.items() if f.closed and f.unwritten == 0]
        if not ready:
            return []
        flush_s = 0.0
        if any(self._files[k].written for k in ready):
            t = time.perf_counter()
            try:
                self._store.flush(self._kb)
            except Exception as exc:  # noqa: BLE001 - unflushed files are rolled back like any failure
                return self._fail(ready, exc)
            flush_s = time.perf_counter() - t
        outcomes: list[Outcome] = []
        for key in ready:
            outcomes.append(Completed(key, self._files.pop(key).written, flush_s * 1000 / len(ready)))
        return outcomes

    def _fail(self, keys: list[int], exc: Exception) -> list[Outcome]:
        # Chunks of these files still in flight must land before the caller's rollback deletes them.
        outcomes = self._settle()
        for key in keys:
            if key in self._files:  # the settled write may have failed it already
                del self._files[key]
                outcomes.append(Failed(key, exc))
        failed = set(keys)
        self._pending = [(k, c) for k, c in self._pending if k not in failed]
        return outcomes


def _unique(keys: Iterable[int]) -> list[int]:
    return list(dict.fromkeys(keys))
