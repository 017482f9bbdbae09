"""IngestPipeline: file → elements → chunks → embeddings → store, recorded in the registry.

Data flows one way: each file is checked and a version begun (ingest/versions.py), read into chunks
batch by batch (ingest/reading.py), embedded and written in batches shared with the files around it
(ingest/batching.py), and published (versions again) as soon as its last chunk is written. A file that
fails, or whose publish is refused (deleted meanwhile, superseded by a later version), is rolled back and
the others go on. When the run ends early (its caller closes it to cancel, or the job was lost to
another worker: `LostJob`), every version still open is rolled back, its chunks deleted, before the
run returns: nothing is left half-indexed. `run` yields what happens as `IngestEvent`s; the caller
iterates them and nothing calls back into it.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from opentelemetry.trace import Span, StatusCode

from core.chunk_context import with_header
from core.protocols import Embedder, VectorStore
from core.tracing import tracer
from core.types import Chunk
from ingest.batching import Batcher, Completed, Failed, Outcome, Stored
from ingest.chunking import StructuredChunker
from ingest.errors import LoadError, NoText
from ingest.events import (
    FileFinished,
    FileProgress,
    FileStarted,
    FileTask,
    IngestEvent,
    IngestResult,
    Progress,
    Stage,
    zero_timings,
)
from ingest.reading import FileReader, Loader, Pages, Version
from ingest.registry import Lease, LostJob, PublishRefused, VersionRef
from ingest.sources import expand_sources
from ingest.versions import Versions

log = logging.getLogger(__name__)


@dataclass
class _Indexing:
    """A file whose new version is begun and not yet published or rolled back."""

    task: FileTask
    into: Version
    title: str = ""
    pages: int | None = None
    pages_done: int = 0
    pages_total: int = 0
    written: int = 0
    timings: dict[str, float] = field(default_factory=zero_timings)

    def read(self, pages: Pages) -> None:
        self.title = pages.title or self.title
        self.pages, self.pages_done, self.pages_total = pages.pages, pages.pages_done, pages.pages_total
        self.timings["parse_ms"] += pages.parse_ms
        self.timings["chunk_ms"] += pages.chunk_ms

    def progress(self, stage: Stage) -> FileProgress:
        return FileProgress(
            self.task, Progress(stage, self.pages_done, self.pages_total, self.written, dict(self.timings))
        )


def embedded_text(chunk: Chunk, *, header: bool) -> str:
    """What is embedded of a chunk: its text, after its document title and heading path when `header`
    (core/chunk_context.py; the store adds the same header to what BM25 indexes on its own setting)."""
    return with_header(chunk) if header else chunk.text


class IngestPipeline:
    def __init__(
        self,
        *,
        loader: Loader,
        chunker: StructuredChunker,
        embedder: Embedder,
        store: VectorStore,
        versions: Versions,
        batch_size: int = 64,
        header_in_vectors: bool = False,
    ) -> None:
        self._reader = FileReader(loader, chunker)
        self._header_in_vectors = header_in_vectors
        self._embedder = embedder
        self._store = store
        self._versions = versions
        self._batch = batch_size

    def run(
        self,
        tasks: Iterable[FileTask],
        *,
        kb: str = "default",
        acl_groups: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
        lease: Lease | None = None,
    ) -> Iterator[IngestEvent]:
        """Index files in order, as a stream of events: each file starts, progresses, and finishes once.

        Groups and tags not given (None) are each document's own, or for a new document its knowledge
        base's default groups (see `Versions.begin`); given ones replace them. Under a job, `lease`
        fences every version this run begins, publishes or fails. Each file is traced as one span."""
        return _traced(self._run(tasks, kb=kb, acl_groups=acl_groups, tags=tags, lease=lease), kb)

    def _run(
        self, tasks: Iterable[FileTask], *, kb: str, acl_groups: Sequence[str] | None, tags: Sequence[str] | None,
        lease: Lease | None,
    ) -> Generator[IngestEvent]:  # fmt: skip
        open_files: dict[int, _Indexing] = {}  # by position in `tasks`
        ended: BaseException | None = None
        try:
            # Leaving the with block waits for the write in flight: rollbacks below delete everything.
            text_of = partial(embedded_text, header=self._header_in_vectors)
            with Batcher(self._embedder, self._store, kb, batch_size=self._batch, text_of=text_of) as batcher:
                for n, task in enumerate(tasks):
                    yield FileStarted(task)
                    begun = self._begin(task, kb=kb, acl_groups=acl_groups, tags=tags, lease=lease)
                    if isinstance(begun, IngestResult):  # rejected or unchanged: nothing to index
                        yield FileFinished(task, begun)
                        continue
                    open_files[n] = begun
                    batcher.open_file(n)
                    yield from self._feed(n, begun, batcher, open_files, lease)
                yield from self._settled(batcher.drain(), open_files, lease)
        except BaseException as exc:
            ended = exc
            raise
        finally:
            if open_files:
                self._abandon(list(open_files.values()), ended, lease)

    def _abandon(self, files: list[_Indexing], ended: BaseException | None, lease: Lease | None) -> None:
        """Roll back the versions still open when a run ends early: cancelled (the caller closed the run),
        lost (another worker holds the job: only our chunks go, it records the rest), or failed."""
        if isinstance(ended, LostJob):
            for file in files:
                self._versions.discard(file.into.kb, [VersionRef(file.into.doc_id, file.into.version)])
            return
        cancelled = isinstance(ended, GeneratorExit)
        status, code = ("cancelled", "cancelled") if cancelled else ("failed", "internal_error")
        for file in files:
            into = file.into
            try:
                self._versions.rollback(
                    into.kb, into.doc_id, into.version, error=f"{status}: {ended or 'the run ended early'}",
                    code=code, status=status, lease=lease,
                )  # fmt: skip
            except LostJob:
                continue  # its chunks are deleted; the worker that holds the job now records the version
            except Exception:
                log.warning("could not roll back %s v%d", into.doc_id, into.version, exc_info=True)

    def _feed(
        self, n: int, file: _Indexing, batcher: Batcher, open_files: dict[int, _Indexing], lease: Lease | None
    ) -> Iterator[IngestEvent]:
        """Read one file into the batcher, writing every batch it fills; stops early if the file fails."""
        pages = self._reader.read(file.task.path, file.into)
        try:
            while n in open_files:
                try:
                    batch = next(pages, None)
                except Exception as exc:  # noqa: BLE001 - whatever broke, this file's half-written version is rolled back
                    yield from self._settled(batcher.discard(n), open_files, lease)
                    if n in open_files:
                        finished = self._rollback(open_files[n], exc, lease)
                        del open_files[n]
                        yield finished
                    return
                if batch is None:
                    yield from self._settled(batcher.close_file(n), open_files, lease)
                    return
                file.read(batch)
                batcher.add(n, batch.chunks)
                yield file.progress("chunking" if batch.chunks else "parsing")
                while batcher.full:
                    yield file.progress("embedding")
                    yield from self._settled(batcher.write_batch(), open_files, lease)
        finally:
            pages.close()  # a file that failed mid-way releases its parser now

    def _settled(
        self, outcomes: list[Outcome], open_files: dict[int, _Indexing], lease: Lease | None
    ) -> Iterator[IngestEvent]:
        for outcome in outcomes:
            file = open_files[outcome.key]
            if isinstance(outcome, Stored):
                file.written += outcome.chunks
                file.timings["embed_ms"] += outcome.embed_ms
                file.timings["index_ms"] += outcome.index_ms
                yield file.progress("indexing")
            elif isinstance(outcome, Completed):
                file.timings["index_ms"] += outcome.flush_ms
                if outcome.chunks == 0:
                    name = file.task.path.name
                    finished = self._rollback(
                        file, NoText(f"no text found in {name} (OCR found nothing legible either)"), lease
                    )
                else:
                    finished = self._publish(file, lease)
                # Open until here: a run that ends in between still rolls the version back.
                del open_files[outcome.key]
                yield finished
            elif isinstance(outcome, Failed):
                finished = self._rollback(file, outcome.error, lease)
                del open_files[outcome.key]
                yield finished

    def _begin(
        self, task: FileTask, *, kb: str, acl_groups: Sequence[str] | None, tags: Sequence[str] | None,
        lease: Lease | None,
    ) -> _Indexing | IngestResult:  # fmt: skip
        path, doc_id = task.path, task.doc_id
        try:
            self._reader.check(path)
            begun = self._versions.begin(
                kb, doc_id, path, acl_groups=acl_groups, tags=tags, lease=lease, origin=task.origin,
                replace=task.replace,
            )  # fmt: skip
        except LoadError as exc:
            log.warning("rejected %s: %s", path, exc)
            return IngestResult(path=str(path), doc_id=doc_id, status="failed", error=str(exc), error_code=exc.code)
        except LostJob:
            raise
        except Exception as exc:
            log.warning("could not begin %s", path, exc_info=True)
            return IngestResult(
                path=str(path), doc_id=doc_id, status="failed", error=str(exc), error_code="internal_error"
            )
        if begun.unchanged:
            return IngestResult(
                path=str(path), doc_id=doc_id, status="unchanged", version=begun.version, chunks=begun.chunks,
                pages=begun.pages,
            )  # fmt: skip
        return _Indexing(task, Version(doc_id, begun.version, kb, begun.acl_groups, begun.tags))

    def _publish(self, file: _Indexing, lease: Lease | None) -> FileFinished:
        into = file.into
        try:
            self._versions.publish(
                into.kb, into.doc_id, into.version, title=file.title, pages=file.pages, chunks=file.written,
                timings=dict(file.timings), lease=lease,
            )  # fmt: skip
        except LostJob:
            raise
        except Exception as exc:  # noqa: BLE001 - an unpublished version is rolled back like any failure
            return self._rollback(file, exc, lease)
        log.info("indexed %s as %s v%d: %d chunks", file.task.path, into.doc_id, into.version, file.written)
        result = IngestResult(
            path=str(file.task.path), doc_id=into.doc_id, status="indexed", version=into.version, chunks=file.written,
            pages=file.pages, timings=dict(file.timings),
        )  # fmt: skip
        return FileFinished(file.task, result)

    def _rollback(self, file: _Indexing, exc: Exception, lease: Lease | None) -> FileFinished:
        into = file.into
        code = str(getattr(exc, "code", "internal_error"))
        self._versions.rollback(into.kb, into.doc_id, into.version, error=str(exc), code=code, lease=lease)
        expected = isinstance(exc, LoadError | PublishRefused)
        log.warning("failed to ingest %s: %s", file.task.path, exc, exc_info=not expected)
        result = IngestResult(
            path=str(file.task.path), doc_id=into.doc_id, status="failed", version=into.version, error=str(exc),
            error_code=code, timings=dict(file.timings),
        )  # fmt: skip
        return FileFinished(file.task, result)

    # -- synchronous ingestion, without a job ---------------------------------------------------------
    def ingest_file(
        self, path: Path, *, doc_id: str, kb: str = "default", acl_groups: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
    ) -> IngestResult:  # fmt: skip
        """Index one file as a new version of `doc_id`; a bad file leaves everything as it was."""
        return self._results([FileTask(path=path, doc_id=doc_id)], kb=kb, acl_groups=acl_groups, tags=tags)[0]

    def ingest_paths(
        self, paths: Iterable[Path], *, kb: str = "default", acl_groups: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
    ) -> list[IngestResult]:  # fmt: skip
        """Ingest files, folders and zip archives synchronously, without a job (demo data at first start,
        evaluation, tests). Replaced versions are hidden at once and purged by the schedule (a worker)."""
        sources = list(expand_sources(paths))
        tasks = [
            FileTask(path=s.path, doc_id=s.doc_id, key=i, origin=s.origin, replace=False)
            for i, s in enumerate(sources)
            if s.error is None
        ]
        indexed = iter(self._results(tasks, kb=kb, acl_groups=acl_groups, tags=tags))
        results = [
            next(indexed)
            if s.error is None
            else IngestResult(
                path=str(s.path), doc_id=s.doc_id, status="failed", error=str(s.error), error_code=s.error.code
            )
            for s in sources
        ]
        # Whatever earlier runs retired and is due goes now; this run's retirements wait for their grace.
        self._versions.purge(kb)
        return results

    def _results(
        self, tasks: Sequence[FileTask], *, kb: str, acl_groups: Sequence[str] | None, tags: Sequence[str] | None
    ) -> list[IngestResult]:
        finished = {
            id(e.task): e.result
            for e in self.run(tasks, kb=kb, acl_groups=acl_groups, tags=tags)
            if isinstance(e, FileFinished)
        }
        return [finished[id(t)] for t in tasks]


def _traced(events: Generator[IngestEvent], kb: str) -> Generator[IngestEvent]:
    """The run's events, with one span per file from its start to its finish. Consecutive files share
    embedding batches and overlap, so a file's span is never the current one: it is a child of whatever
    was current when the run began (the worker's job span)."""
    spans: dict[int, Span] = {}
    try:
        for event in events:
            if isinstance(event, FileStarted):
                spans[id(event.task)] = tracer.start_span(
                    "ingest file",
                    attributes={"kb.kb": kb, "kb.doc_id": event.task.doc_id, "kb.file": event.task.path.name},
                )
            elif isinstance(event, FileFinished) and (span := spans.pop(id(event.task), None)) is not None:
                result = event.result
                span.set_attributes(
                    {"kb.status": result.status, "kb.version": result.version, "kb.chunks": result.chunks}
                )
                if result.status == "failed":
                    span.set_attribute("kb.error_code", result.error_code)
                    span.set_status(StatusCode.ERROR, result.error)
                span.end()
            yield event
    finally:
        # Closed early (cancelled) or broken off: the run rolls back what is open now, as `yield from` would.
        events.close()
        for span in spans.values():
            span.set_status(StatusCode.ERROR, "the run ended before the file finished")
            span.end()
