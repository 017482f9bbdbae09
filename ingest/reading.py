"""Parse → chunk: one file's elements, a batch of pages at a time, turned into the Chunks of one version.

A 500-page PDF arrives a few pages at a time (ingest/pdf.py), so its chunks are made, and handed on,
batch by batch; nothing here holds a whole document.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.types import Chunk
from ingest.chunking import ChunkSession, StructuredChunker, TextChunk
from ingest.filetypes import FileKind
from ingest.loaders import ParsedDocument, title_of


class Loader(Protocol):
    def check(self, path: Path) -> FileKind: ...

    def open(self, path: Path) -> ParsedDocument: ...


@dataclass(frozen=True)
class Pages:
    """What one batch of pages gave: its chunks, where the file stands, and what it cost."""

    chunks: list[Chunk]
    title: str  # "" until the first elements are seen
    pages_done: int  # 0 when the loader does not count pages as it goes
    pages_total: int  # 0 when unknown
    pages: int | None  # the page count to record: the loader's, else the highest page seen so far
    parse_ms: float
    chunk_ms: float


@dataclass(frozen=True)
class Version:
    """Where a file's chunks belong: the version being indexed and the metadata every chunk carries."""

    doc_id: str
    version: int
    kb: str
    acl_groups: Sequence[str] = ()
    tags: Sequence[str] = ()


class FileReader:
    def __init__(self, loader: Loader, chunker: StructuredChunker) -> None:
        self._loader = loader
        self._chunker = chunker

    def check(self, path: Path) -> None:
        """Refuse a file that cannot be ingested (LoadError) before any version is begun for it."""
        self._loader.check(path)

    def read(self, path: Path, into: Version) -> Generator[Pages, None, None]:
        """The file's chunks, batch by batch; the first item comes right after the file is opened."""
        t = time.perf_counter()
        parsed = self._loader.open(path)
        total = parsed.pages or 0
        yield Pages([], "", 0, total, parsed.pages, (time.perf_counter() - t) * 1000, 0.0)
        session: ChunkSession | None = None
        title, pages, pages_done, ordinal = "", parsed.pages, 0, 0
        while True:
            t = time.perf_counter()
            batch = next(parsed.batches, None)
            parse_ms = (time.perf_counter() - t) * 1000
            if batch is None:
                return
            done, elements = batch
            pages_done = done or pages_done
            seen = [e.page for e in elements if e.page is not None]
            if seen and parsed.pages is None:
                pages = max(pages or 0, *seen)
            chunks: list[Chunk] = []
            t = time.perf_counter()
            if elements:
                if session is None:
                    title = title_of(path, elements, parsed.metadata_title)
                    session = self._chunker.session(title, title_is_section=parsed.titled_pages)
                pieces = session.feed(elements)
                chunks = [
                    # The file's name, not its path: chunks reach callers, and server paths are not theirs to see.
                    _chunk(p, into, ordinal=ordinal + i, title=title, source=path.name)
                    for i, p in enumerate(pieces)
                ]
                ordinal += len(chunks)
            chunk_ms = (time.perf_counter() - t) * 1000
            yield Pages(chunks, title, pages_done, max(total, pages_done), pages, parse_ms, chunk_ms)


def _chunk(piece: TextChunk, into: Version, *, ordinal: int, title: str, source: str) -> Chunk:
    return Chunk(
        chunk_id=Chunk.make_id(into.doc_id, into.version, ordinal), doc_id=into.doc_id, version=into.version,
        kb=into.kb, ordinal=ordinal, text=piece.text, title=title, source=source, page=piece.page,
        section=piece.section, category=piece.category, acl_groups=list(into.acl_groups), tags=list(into.tags),
        token_count=piece.token_count,
    )  # fmt: skip
