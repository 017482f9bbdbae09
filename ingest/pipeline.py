"""IngestPipeline: file → elements → chunks → embeddings → Milvus, recorded in the registry.

Files stream through: elements arrive a batch of pages at a time, chunks are embedded and written a
batch at a time, so a 500-page PDF never holds all its embeddings in memory. A new version becomes
visible in one registry transaction (`publish`); until then queries hide it, and after it they hide the
old one, whose chunks are purged once queries that started before the switch have had time to finish.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from core.protocols import Embedder
from core.types import Chunk
from ingest.chunking import ChunkSession, StructuredChunker, TextChunk
from ingest.elements import Element
from ingest.errors import LoadError, NoText
from ingest.filetypes import FileKind
from ingest.loaders import ParsedDocument, title_of
from ingest.registry import Registry, VersionRef
from ingest.sources import expand_sources

log = logging.getLogger(__name__)

Stage = Literal["parsing", "chunking", "embedding", "indexing"]


class Loader(Protocol):
    def check(self, path: Path) -> FileKind: ...

    def open(self, path: Path) -> ParsedDocument: ...


class ChunkSink(Protocol):
    """The part of the vector store that ingestion writes to."""

    def upsert(self, kb: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int: ...

    def flush(self, kb: str) -> None: ...

    def delete_version(self, kb: str, doc_id: str, version: int) -> None: ...


@dataclass(frozen=True)
class Progress:
    stage: Stage
    pages_done: int
    pages_total: int
    chunks_done: int
    timings: dict[str, float]


ProgressCallback = Callable[[Progress], None]


@dataclass
class IngestResult:
    path: str
    doc_id: str
    status: Literal["indexed", "unchanged", "failed"]
    version: int = 0
    chunks: int = 0
    pages: int | None = None
    error: str = ""
    error_code: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Timer:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {"parse_ms": 0.0, "chunk_ms": 0.0, "embed_ms": 0.0, "index_ms": 0.0}

    def add(self, key: str, since: float) -> float:
        end = time.perf_counter()
        self.ms[key] += (end - since) * 1000
        return end


@dataclass(frozen=True)
class FileTask:
    path: Path
    doc_id: str
    key: int = 0  # the caller's handle (a job item's ordinal)


@dataclass
class _FileRun:
    task: FileTask
    result: IngestResult
    version: int = 0
    title: str = ""
    pages: int | None = None
    pages_total: int = 0
    pages_done: int = 0
    queued_total: int = 0  # chunks made so far (they become the ordinals)
    waiting: int = 0  # chunks made but not yet written
    written: int = 0
    parsed: bool = False
    closed: bool = False
    stage: Stage = "parsing"
    timer: _Timer = field(default_factory=_Timer)
    report: Callable[[Stage], None] = field(default=lambda _stage: None)

    def progress(self) -> Progress:
        total = max(self.pages_total, self.pages_done)
        return Progress(self.stage, self.pages_done, total, self.written, dict(self.timer.ms))


class _BatchWriter:
    """Collects chunks of consecutive files into full embedding batches; publishes each file when done.

    Writing batch N to Milvus overlaps with embedding batch N+1 (one writer thread): the insert waits on
    the Milvus server (BM25 analysis, index updates) while the CPU embeds.
    """

    def __init__(self, pipeline: IngestPipeline, kb: str, *, batch: int, on_finished: Callable[[_FileRun], None]):
        self._pipeline = pipeline
        self._kb = kb
        self._batch = batch
        self._on_finished = on_finished
        self._pending: list[tuple[_FileRun, Chunk]] = []
        self._open: list[_FileRun] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kb-index")
        self._inflight: tuple[list[tuple[_FileRun, Chunk]], Future[float], float] | None = None

    def add(self, run: _FileRun, chunks: list[Chunk]) -> None:
        if run not in self._open:
            self._open.append(run)
        run.waiting += len(chunks)
        self._pending.extend((run, c) for c in chunks)
        while len(self._pending) >= self._batch:
            self._write_batch()

    def parsed(self, run: _FileRun) -> None:
        run.parsed = True
        if run not in self._open:
            self._open.append(run)
        self._close_finished()

    def drain(self) -> None:
        try:
            while self._pending:
                self._write_batch()
            self._settle()
            self._close_finished()
        finally:
            self._executor.shutdown(wait=True)

    def fail(self, run: _FileRun, exc: BaseException) -> None:
        if run.closed:
            return
        if self._inflight is not None and any(r is run for r, _ in self._inflight[0]):
            self._settle()  # its chunks must have landed before the rollback deletes them
            if run.closed:
                return
        run.closed = True
        self._pending = [(r, c) for r, c in self._pending if r is not run]
        if run in self._open:
            self._open.remove(run)
        code = getattr(exc, "code", "internal_error")
        self._pipeline.rollback(self._kb, run.task.doc_id, run.version, error=str(exc), code=code)
        run.result.error, run.result.error_code, run.result.timings = str(exc), code, run.timer.ms
        log.warning("failed to ingest %s: %s", run.task.path, exc, exc_info=not isinstance(exc, LoadError))
        self._on_finished(run)

    def _write_batch(self) -> None:
        batch, self._pending = self._pending[: self._batch], self._pending[self._batch :]
        runs = {id(r): r for r, _ in batch}
        for run in runs.values():
            run.report("embedding")
        chunks = [c for _, c in batch]
        try:
            vectors, embed_s = self._pipeline.embed(chunks)
        except Exception as exc:  # noqa: BLE001 - the files in this batch fail and are rolled back; others go on
            for run in runs.values():
                self.fail(run, exc)
            return
        self._settle()
        batch = [(r, c) for r, c in batch if not r.closed]
        if batch:
            future = self._executor.submit(self._pipeline.store_batch, self._kb, [c for _, c in batch], vectors)
            self._inflight = (batch, future, embed_s)

    def _settle(self) -> None:
        """Wait for the batch being written, then account for it and publish files it completed."""
        if self._inflight is None:
            return
        batch, future, embed_s = self._inflight
        self._inflight = None
        runs = {id(r): r for r, _ in batch}
        try:
            index_s = future.result()
        except Exception as exc:  # noqa: BLE001 - the files in this batch fail and are rolled back; others go on
            for run in runs.values():
                self.fail(run, exc)
            return
        # Each file is charged its share of the shared batch's time.
        for run, _ in batch:
            run.timer.ms["embed_ms"] += embed_s * 1000 / len(batch)
            run.timer.ms["index_ms"] += index_s * 1000 / len(batch)
            run.waiting -= 1
            run.written += 1
        for run in runs.values():
            run.report("indexing")
        self._close_finished()

    def _close_finished(self) -> None:
        ready = [r for r in self._open if r.parsed and r.waiting == 0 and not r.closed]
        if not ready:
            return
        if any(r.written for r in ready):
            flush_s = self._pipeline.flush(self._kb)
            for run in ready:
                run.timer.ms["index_ms"] += flush_s * 1000 / len(ready)
        for run in ready:
            if run.written == 0:
                self.fail(run, NoText(f"no text found in {run.task.path.name} (OCR found nothing legible either)"))
                continue
            run.closed = True
            self._open.remove(run)
            try:
                self._pipeline.publish(self._kb, run)
            except Exception as exc:  # noqa: BLE001 - an unpublished version is rolled back like any failure
                run.closed = False
                self.fail(run, exc)
                continue
            self._on_finished(run)


class IngestPipeline:
    def __init__(
        self,
        *,
        loader: Loader,
        chunker: StructuredChunker,
        embedder: Embedder,
        store: ChunkSink,
        registry: Registry,
        batch_size: int = 64,
        purge_grace_s: float = 2.0,
    ) -> None:
        self._loader = loader
        self._chunker = chunker
        self._embedder = embedder
        self._store = store
        self._registry = registry
        self._batch = batch_size
        self.purge_grace_s = purge_grace_s

    def ingest_file(
        self,
        path: Path,
        *,
        doc_id: str,
        kb: str = "default",
        acl_groups: Sequence[str] = (),
        tags: Sequence[str] = (),
        job_id: str = "",
        on_progress: ProgressCallback | None = None,
    ) -> IngestResult:
        """Index one file as a new version of `doc_id`; a bad file leaves everything as it was."""
        task = FileTask(path=path, doc_id=doc_id)
        return self.ingest_many(
            [task], kb=kb, acl_groups=acl_groups, tags=tags, job_id=job_id,
            on_progress=(lambda _t, p: on_progress(p)) if on_progress else None,
        )[0]  # fmt: skip

    def ingest_many(
        self,
        tasks: Sequence[FileTask],
        *,
        kb: str = "default",
        acl_groups: Sequence[str] = (),
        tags: Sequence[str] = (),
        job_id: str = "",
        on_start: Callable[[FileTask], None] | None = None,
        on_progress: Callable[[FileTask, Progress], None] | None = None,
        on_result: Callable[[FileTask, IngestResult], None] | None = None,
    ) -> list[IngestResult]:
        """Index files in order; chunks of consecutive files share embedding batches.

        Many small files (one FAQ each) would otherwise embed a handful of chunks per call, which costs
        the CPU about a third of its throughput. A file is published as soon as its last chunk is written.
        """
        results: dict[int, IngestResult] = {}

        def finished(run: _FileRun) -> None:
            results[id(run.task)] = run.result
            if on_result is not None:
                on_result(run.task, run.result)

        writer = _BatchWriter(self, kb, batch=self._batch, on_finished=finished)
        for task in tasks:
            if on_start is not None:
                on_start(task)
            run = self._begin(task, kb=kb, acl_groups=acl_groups, tags=tags, job_id=job_id)
            if run.version == 0:  # rejected or unchanged: nothing to index
                finished(run)
                continue

            def report(stage: Stage, _run: _FileRun = run) -> None:
                if on_progress is not None:
                    _run.stage = stage
                    on_progress(_run.task, _run.progress())

            run.report = report
            try:
                self._parse_into(run, writer, kb=kb, acl_groups=acl_groups, tags=tags)
            except Exception as exc:  # noqa: BLE001 - whatever broke, this file's half-written version is rolled back
                writer.fail(run, exc)
                continue
            writer.parsed(run)
        writer.drain()
        return [results[id(t)] for t in tasks]

    def _begin(
        self, task: FileTask, *, kb: str, acl_groups: Sequence[str], tags: Sequence[str], job_id: str
    ) -> _FileRun:
        path, doc_id = task.path, task.doc_id
        run = _FileRun(task=task, result=IngestResult(path=str(path), doc_id=doc_id, status="failed"))
        try:
            self._loader.check(path)
        except LoadError as exc:
            run.result.error, run.result.error_code = str(exc), exc.code
            log.warning("rejected %s: %s", path, exc)
            return run
        sha = sha256_file(path)
        current = self._registry.current_version(kb, doc_id)
        if (
            current is not None
            and current.sha256 == sha
            and list(current.acl_groups) == list(acl_groups)
            and list(current.tags) == list(tags)
        ):
            run.result.status, run.result.version = "unchanged", current.version
            run.result.chunks, run.result.pages = current.chunk_count, current.pages
            return run
        run.version = self._registry.begin_version(
            kb, doc_id, title=path.stem, source=str(path), sha256=sha, size=path.stat().st_size,
            acl_groups=list(acl_groups), tags=list(tags), job_id=job_id,
        )  # fmt: skip
        run.result.version = run.version
        return run

    def _parse_into(
        self, run: _FileRun, writer: _BatchWriter, *, kb: str, acl_groups: Sequence[str], tags: Sequence[str]
    ) -> None:
        path, timer = run.task.path, run.timer
        t = time.perf_counter()
        parsed = self._loader.open(path)
        t = timer.add("parse_ms", t)
        run.pages_total = parsed.pages or 0
        run.pages = parsed.pages
        session: ChunkSession | None = None
        run.report("parsing")
        batches: Iterator[tuple[int | None, list[Element]]] = iter(parsed.batches)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            t = timer.add("parse_ms", t)
            if batch is None:
                break
            done, elements = batch
            run.pages_done = done or run.pages_done
            pages_seen = [e.page for e in elements if e.page is not None]
            if pages_seen and parsed.pages is None:
                run.pages = max(run.pages or 0, *pages_seen)
            if not elements:
                run.report("parsing")
                continue
            if session is None:
                run.title = title_of(path, elements)
                session = self._chunker.session(run.title)
            run.report("chunking")
            pieces = session.feed(elements)
            t = timer.add("chunk_ms", t)
            base = run.queued_total
            chunks = [
                self._chunk(p, ordinal=base + i, doc_id=run.task.doc_id, version=run.version, kb=kb,
                            title=run.title, source=str(path), acl_groups=acl_groups, tags=tags)
                for i, p in enumerate(pieces)
            ]  # fmt: skip
            run.queued_total += len(chunks)
            writer.add(run, chunks)
            run.report("parsing")

    def embed(self, chunks: Sequence[Chunk]) -> tuple[list[list[float]], float]:
        t = time.perf_counter()
        vectors = self._embedder.embed([c.text for c in chunks], "passage")
        return vectors, time.perf_counter() - t

    def store_batch(self, kb: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> float:
        t = time.perf_counter()
        self._store.upsert(kb, chunks, vectors)
        return time.perf_counter() - t

    def publish(self, kb: str, run: _FileRun) -> None:
        self._registry.publish(
            kb, run.task.doc_id, run.version, title=run.title, pages=run.pages, chunks=run.written, timings=run.timer.ms
        )
        r = run.result
        r.status, r.chunks, r.pages, r.timings = "indexed", run.written, run.pages, run.timer.ms
        log.info("indexed %s as %s v%d: %d chunks", run.task.path, run.task.doc_id, run.version, run.written)

    def flush(self, kb: str) -> float:
        t = time.perf_counter()
        self._store.flush(kb)
        return time.perf_counter() - t

    @staticmethod
    def _chunk(
        piece: TextChunk, *, ordinal: int, doc_id: str, version: int, kb: str, title: str, source: str,
        acl_groups: Sequence[str], tags: Sequence[str],
    ) -> Chunk:  # fmt: skip
        return Chunk(
            chunk_id=Chunk.make_id(doc_id, version, ordinal), doc_id=doc_id, version=version, kb=kb,
            ordinal=ordinal, text=piece.text, title=title, source=source, page=piece.page, section=piece.section,
            category=piece.category, acl_groups=list(acl_groups), tags=list(tags), token_count=piece.token_count,
        )  # fmt: skip

    def rollback(self, kb: str, doc_id: str, version: int, *, error: str, code: str, status: str = "failed") -> None:
        """Remove whatever part of `version` reached the store and record why it failed."""
        self._registry.fail(kb, doc_id, version, error, code=code, status=status)
        self._store.delete_version(kb, doc_id, version)
        self._registry.mark_purged(kb, [VersionRef(doc_id, version)])

    def unfinished_versions(self, job_id: str) -> list[VersionRef]:
        return self._registry.indexing_versions(job_id)

    def purge(self, kb: str, *, grace_s: float | None = None) -> int:
        """Delete the chunks of retired versions (replaced, deleted, failed) from the store."""
        refs = self._registry.purgeable(kb, grace_s=self.purge_grace_s if grace_s is None else grace_s)
        for ref in refs:
            self._store.delete_version(kb, ref.doc_id, ref.version)
        if refs:
            self._store.flush(kb)
            self._registry.mark_purged(kb, refs)
        return len(refs)

    def ingest_paths(
        self, paths: Iterable[Path], *, kb: str = "default", acl_groups: Sequence[str] = (), tags: Sequence[str] = ()
    ) -> list[IngestResult]:
        """Ingest synchronously, without a job (demo data at first start, tests of the pipeline itself)."""
        sources = list(expand_sources(paths))
        tasks = [FileTask(path=s.path, doc_id=s.doc_id) for s in sources if s.error is None]
        indexed = iter(self.ingest_many(tasks, kb=kb, acl_groups=acl_groups, tags=tags))
        results = [
            next(indexed)
            if s.error is None
            else IngestResult(
                path=str(s.path), doc_id=s.doc_id, status="failed", error=str(s.error), error_code=s.error.code
            )
            for s in sources
        ]
        if any(r.status == "indexed" for r in results):
            time.sleep(self.purge_grace_s)
            self.purge(kb)
        return results
