"""What ingestion reports: one stream of events per run, in the order things happen.

`IngestPipeline.run` yields them and its caller (the job worker, or `ingest_paths` collecting results)
decides what to do with each; nothing is called back. A file starts, reports progress any number of
times, and finishes exactly once with its `IngestResult`. Files finish in the order their last chunk is
written, which may interleave with the next file's start, because consecutive files share batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# Where a file is in the pipeline. Jobs add their own states around these ("queued", "done", "failed").
Stage = Literal["parsing", "chunking", "embedding", "indexing"]


def zero_timings() -> dict[str, float]:
    """Per-stage milliseconds of one file, every key present so that reports can rely on them."""
    return {"parse_ms": 0.0, "chunk_ms": 0.0, "embed_ms": 0.0, "index_ms": 0.0}


@dataclass(frozen=True)
class FileTask:
    path: Path
    doc_id: str
    key: int = 0  # the caller's handle (a job item's ordinal)
    # Where the content comes from (ingest/sources.py); another origin under the same id is a conflict,
    # unless `replace` (the caller named the document id).
    origin: str = ""
    replace: bool = True


@dataclass(frozen=True)
class Progress:
    stage: Stage
    pages_done: int
    pages_total: int
    chunks_done: int
    timings: dict[str, float]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class FileStarted:
    task: FileTask


@dataclass(frozen=True)
class FileProgress:
    task: FileTask
    progress: Progress


@dataclass(frozen=True)
class FileFinished:
    task: FileTask
    result: IngestResult


IngestEvent = FileStarted | FileProgress | FileFinished
