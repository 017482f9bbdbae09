"""IngestPipeline: file → elements → chunks → embeddings → Milvus, recorded in the registry."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from ingest.chunking import StructuredChunker, TextChunk
from ingest.loaders import SUPPORTED_SUFFIXES, LoadedDocument, LoadError
from ingest.registry import Registry
from retrieval.types import Chunk, Embedder

log = logging.getLogger(__name__)


class Loader(Protocol):
    def load(self, path: Path) -> LoadedDocument: ...


class ChunkSink(Protocol):
    """The part of the vector store that ingestion writes to."""

    def upsert(self, kb: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int: ...

    def flush(self, kb: str) -> None: ...

    def delete_version(self, kb: str, doc_id: str, version: int) -> None: ...

    def delete_document(self, kb: str, doc_id: str, *, keep_version: int | None = None) -> None: ...


@dataclass
class IngestResult:
    path: str
    doc_id: str
    status: Literal["indexed", "unchanged", "failed"]
    version: int = 0
    chunks: int = 0
    pages: int | None = None
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expand_paths(paths: Iterable[Path]) -> Iterator[tuple[Path, str]]:
    """Files to ingest with their document ids: the path relative to the folder given, or the name."""
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
                yield file, file.relative_to(path).as_posix()
        else:
            yield path, path.name


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
        max_file_bytes: int = 100 * 1024 * 1024,
    ) -> None:
        self._loader = loader
        self._chunker = chunker
        self._embedder = embedder
        self._store = store
        self._registry = registry
        self._batch = batch_size
        self._max_bytes = max_file_bytes

    def ingest_paths(
        self, paths: Iterable[Path], *, kb: str = "default", acl_groups: Sequence[str] = (), tags: Sequence[str] = ()
    ) -> list[IngestResult]:
        """Ingest every file; one bad file is reported and does not stop the others."""
        results = [
            self.ingest_file(file, doc_id=doc_id, kb=kb, acl_groups=acl_groups, tags=tags)
            for file, doc_id in expand_paths(paths)
        ]
        self._store.flush(kb)
        return results

    def ingest_file(
        self,
        path: Path,
        *,
        doc_id: str,
        kb: str = "default",
        acl_groups: Sequence[str] = (),
        tags: Sequence[str] = (),
    ) -> IngestResult:
        result = IngestResult(path=str(path), doc_id=doc_id, status="failed")
        try:
            self._check(path)
        except LoadError as exc:
            result.error = str(exc)
            log.warning("skipped %s: %s", path, exc)
            return result
        sha = sha256_file(path)
        current = self._registry.current_version(kb, doc_id)
        if current is not None and current.sha256 == sha and current.status == "ready":
            result.status, result.version, result.chunks = "unchanged", current.version, current.chunk_count
            return result

        version = self._registry.begin_version(
            kb, doc_id, title=path.stem, source=str(path), sha256=sha, size=path.stat().st_size,
            acl_groups=list(acl_groups), tags=list(tags),
        )  # fmt: skip
        result.version = version
        try:
            t0 = time.perf_counter()
            document = self._loader.load(path)
            t1 = time.perf_counter()
            pieces = self._chunker.split(document)
            if not pieces:
                raise LoadError(f"no text to index in {path.name}")
            t2 = time.perf_counter()
            chunks = self._chunks(
                pieces, document, doc_id=doc_id, version=version, kb=kb, acl_groups=acl_groups, tags=tags
            )
            embed_ms = self._embed_and_write(kb, chunks)
            self._store.flush(kb)
            # The new version is complete before the old one goes away.
            self._store.delete_document(kb, doc_id, keep_version=version)
            t3 = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - whatever broke, the half-written version is rolled back
            self._store.delete_version(kb, doc_id, version)
            self._registry.fail(kb, doc_id, version, str(exc))
            result.error = str(exc)
            log.warning("failed to ingest %s: %s", path, exc)
            return result
        self._registry.publish(kb, doc_id, version, title=document.title, pages=document.pages, chunks=len(chunks))
        result.status, result.chunks, result.pages = "indexed", len(chunks), document.pages
        result.timings = {
            "parse_ms": (t1 - t0) * 1000,
            "chunk_ms": (t2 - t1) * 1000,
            "embed_ms": embed_ms,
            "index_ms": (t3 - t2) * 1000 - embed_ms,
        }
        log.info("indexed %s as %s v%d: %d chunks", path, doc_id, version, len(chunks))
        return result

    def _check(self, path: Path) -> None:
        if not path.is_file():
            raise LoadError(f"not a file: {path}")
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise LoadError(f"unsupported file type {path.suffix or '(none)'}: {path.name}")
        size = path.stat().st_size
        if size == 0:
            raise LoadError(f"empty file: {path.name}")
        if size > self._max_bytes:
            raise LoadError(f"{path.name} is {size / 1e6:.1f} MB, over the limit of {self._max_bytes / 1e6:.0f} MB")

    @staticmethod
    def _chunks(
        pieces: Sequence[TextChunk],
        document: LoadedDocument,
        *,
        doc_id: str,
        version: int,
        kb: str,
        acl_groups: Sequence[str],
        tags: Sequence[str],
    ) -> list[Chunk]:
        return [
            Chunk(
                chunk_id=Chunk.make_id(doc_id, version, i),
                doc_id=doc_id,
                version=version,
                kb=kb,
                ordinal=i,
                text=p.text,
                title=document.title,
                source=str(document.path),
                page=p.page,
                section=p.section,
                acl_groups=list(acl_groups),
                tags=list(tags),
                token_count=p.token_count,
            )
            for i, p in enumerate(pieces)
        ]

    def _embed_and_write(self, kb: str, chunks: Sequence[Chunk]) -> float:
        embed_s = 0.0
        for start in range(0, len(chunks), self._batch):
            batch = chunks[start : start + self._batch]
            t = time.perf_counter()
            vectors = self._embedder.embed([c.text for c in batch], "passage")
            embed_s += time.perf_counter() - t
            self._store.upsert(kb, batch, vectors)
        return embed_s * 1000
