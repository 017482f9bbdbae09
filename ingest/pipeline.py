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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ingest.chunking import ChunkSession, StructuredChunker, TextChunk
from ingest.errors import LoadError, NoText
from ingest.filetypes import FileKind
from ingest.loaders import ParsedDocument, title_of
from ingest.registry import Registry, VersionRef
from retrieval.types import Chunk, Embedder

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
        result = IngestResult(path=str(path), doc_id=doc_id, status="failed")
        try:
            self._loader.check(path)
        except LoadError as exc:
            result.error, result.error_code = str(exc), exc.code
            log.warning("rejected %s: %s", path, exc)
            return result
        sha = sha256_file(path)
        current = self._registry.current_version(kb, doc_id)
        if (
            current is not None
            and current.sha256 == sha
            and list(current.acl_groups) == list(acl_groups)
            and list(current.tags) == list(tags)
        ):
            result.status, result.version, result.chunks = "unchanged", current.version, current.chunk_count
            result.pages = current.pages
            return result

        version = self._registry.begin_version(
            kb, doc_id, title=path.stem, source=str(path), sha256=sha, size=path.stat().st_size,
            acl_groups=list(acl_groups), tags=list(tags), job_id=job_id,
        )  # fmt: skip
        result.version = version
        timer = _Timer()
        try:
            title, pages, count = self._index(
                path, doc_id=doc_id, version=version, kb=kb, acl_groups=acl_groups, tags=tags,
                timer=timer, on_progress=on_progress,
            )  # fmt: skip
        except Exception as exc:
            self.rollback(kb, doc_id, version, error=str(exc), code=getattr(exc, "code", "internal_error"))
            result.error, result.error_code = str(exc), getattr(exc, "code", "internal_error")
            result.timings = timer.ms
            log.warning("failed to ingest %s: %s", path, exc, exc_info=not isinstance(exc, LoadError))
            return result
        self._registry.publish(kb, doc_id, version, title=title, pages=pages, chunks=count, timings=timer.ms)
        result.status, result.chunks, result.pages, result.timings = "indexed", count, pages, timer.ms
        log.info("indexed %s as %s v%d: %d chunks", path, doc_id, version, count)
        return result

    def _index(
        self, path: Path, *, doc_id: str, version: int, kb: str, acl_groups: Sequence[str], tags: Sequence[str],
        timer: _Timer, on_progress: ProgressCallback | None,
    ) -> tuple[str, int | None, int]:  # fmt: skip
        t = time.perf_counter()
        parsed = self._loader.open(path)
        t = timer.add("parse_ms", t)
        pages_total = parsed.pages or 0
        pages_done = 0
        session: ChunkSession | None = None
        title = ""
        max_page: int | None = None
        pending: list[Chunk] = []
        written = 0

        def report(stage: Stage) -> None:
            if on_progress is not None:
                on_progress(Progress(stage, pages_done, max(pages_total, pages_done), written, dict(timer.ms)))

        report("parsing")
        batches: Iterator[tuple[int | None, list]] = iter(parsed.batches)  # type: ignore[type-arg]
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            t = timer.add("parse_ms", t)
            if batch is None:
                break
            done, elements = batch
            pages_done = done or pages_done
            pages_seen = [e.page for e in elements if e.page is not None]
            if pages_seen:
                max_page = max(max_page or 0, *pages_seen)
            if not elements:
                report("parsing")
                continue
            if session is None:
                title = title_of(path, elements)
                session = self._chunker.session(title)
            report("chunking")
            pieces = session.feed(elements)
            t = timer.add("chunk_ms", t)
            base = written + len(pending)
            pending.extend(
                self._chunk(p, ordinal=base + i, doc_id=doc_id, version=version, kb=kb,
                            title=title, source=str(path), acl_groups=acl_groups, tags=tags)
                for i, p in enumerate(pieces)
            )  # fmt: skip
            while len(pending) >= self._batch:
                written += self._write(kb, pending[: self._batch], timer, report)
                del pending[: self._batch]
            report("parsing")
        if pending:
            written += self._write(kb, pending, timer, report)
        if written == 0:
            raise NoText(f"no text found in {path.name} (if it is a scan, OCR found nothing legible either)")
        t = time.perf_counter()
        self._store.flush(kb)
        timer.add("index_ms", t)
        pages = parsed.pages if parsed.pages is not None else max_page
        return title, pages, written

    def _write(self, kb: str, chunks: Sequence[Chunk], timer: _Timer, report: Callable[[Stage], None]) -> int:
        report("embedding")
        t = time.perf_counter()
        vectors = self._embedder.embed([c.text for c in chunks], "passage")
        t = timer.add("embed_ms", t)
        report("indexing")
        self._store.upsert(kb, chunks, vectors)
        timer.add("index_ms", t)
        return len(chunks)

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
        from ingest.sources import expand_sources

        results = []
        for source in expand_sources(paths):
            if source.error is not None:
                results.append(
                    IngestResult(path=str(source.path), doc_id=source.doc_id, status="failed",
                                 error=str(source.error), error_code=source.error.code)
                )  # fmt: skip
                continue
            results.append(self.ingest_file(source.path, doc_id=source.doc_id, kb=kb, acl_groups=acl_groups, tags=tags))
        if any(r.status == "indexed" for r in results):
            time.sleep(self.purge_grace_s)
            self.purge(kb)
        return results
