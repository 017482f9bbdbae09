"""Ingestion benchmark: end-to-end chunks/s beside the raw embedding rate of the same model, in one run.

End to end means what an admin waits for: a queued job through parsing, chunking, embedding and
indexing into a fresh Milvus Lite. The baseline re-embeds exactly the chunks that run produced, with the
same model and batch size, and nothing else, so the ratio says how much the rest of the pipeline costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class IngestBench:
    dataset: str
    files: int
    failed: int
    pages: int
    chunks: int
    seconds: float
    chunks_per_s: float
    raw_embed_chunks_per_s: float
    ratio: float
    stage_ms: dict[str, float]


@dataclass(frozen=True)
class MemoryBench:
    pages: int
    chunks: int
    seconds: float
    peak_rss_mb: float
    baseline_pages: int
    baseline_peak_rss_mb: float


def bench_dataset(build: Callable[[Path], AbstractContextManager[Any]], dataset: Path) -> IngestBench:
    """`build(home)` gives a Container for a fresh KB_HOME (the bench must not touch real data)."""
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp, build(Path(tmp)) as container:
        container.warm_up_ingest()
        t0 = time.perf_counter()
        job_id = container.documents.submit([dataset], kb="bench", uploads_dir=Path(tmp) / "uploads")
        container.worker().run(until_idle=True)
        seconds = time.perf_counter() - t0
        view = container.jobs.get(job_id)
        texts = [
            c.text
            for item in view.items
            if item.status == "indexed"
            for c in container.store.document_chunks("bench", item.doc_id)
        ]
        embedder = container.embedder
        batch = container.settings.embedding.batch_size
        t1 = time.perf_counter()
        for start in range(0, len(texts), batch):
            embedder.embed(texts[start : start + batch], "passage")
        raw_s = time.perf_counter() - t1
    chunks = len(texts)
    rate = chunks / seconds if seconds else 0.0
    raw = chunks / raw_s if raw_s else 0.0
    return IngestBench(
        dataset=str(dataset), files=view.job.files_total, failed=view.job.files_failed, pages=view.job.pages_done,
        chunks=chunks, seconds=round(seconds, 2), chunks_per_s=round(rate, 1), raw_embed_chunks_per_s=round(raw, 1),
        ratio=round(rate / raw, 3) if raw else 0.0, stage_ms={k: round(v) for k, v in (view.job.timings or {}).items()},
    )  # fmt: skip


def bench_memory(pdf: Path, baseline_pdf: Path, *, pages: int, baseline_pages: int) -> MemoryBench:
    """Peak RSS of a fresh `kb ingest --wait` process for a long PDF, beside the same for a short one."""
    long_run = _ingest_subprocess(pdf)
    short_run = _ingest_subprocess(baseline_pdf)
    return MemoryBench(
        pages=pages, chunks=long_run["chunks"], seconds=long_run["seconds"], peak_rss_mb=long_run["rss_mb"],
        baseline_pages=baseline_pages, baseline_peak_rss_mb=short_run["rss_mb"],
    )  # fmt: skip


def _ingest_subprocess(pdf: Path) -> dict[str, Any]:
    # RUSAGE_CHILDREN is the high-water mark over all waited-for children, so each run gets its own
    # measuring wrapper process.
    probe = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "out = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': out.returncode, 'stdout': out.stdout, 'stderr': out.stderr[-2000:],"
        " 'rss_mb': rss, 'seconds': time.perf_counter() - t}))\n"
    )
    with tempfile.TemporaryDirectory(prefix="kb-bench-mem-") as home:
        env = {**os.environ, "KB_HOME": home, "KB_LOG_LEVEL": "WARNING"}
        cmd = [sys.executable, "-c", probe, sys.executable, "-m", "app.cli", "ingest", "--wait", "--json", str(pdf)]
        result = json.loads(subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"ingest of {pdf.name} failed: {result['stderr']}")
    report = json.loads(result["stdout"])
    return {"chunks": report["chunks_done"], "rss_mb": round(result["rss_mb"]), "seconds": round(result["seconds"], 1)}


def make_long_pdf(path: Path, pages: int) -> Path:
    """A text PDF of `pages` pages (about 40 lines each), for the memory benchmark."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    for p in range(1, pages + 1):
        y = 790
        for i in range(44):
            c.drawString(
                50, y, f"Section {p}.{i}: maintenance item {p * 100 + i} is inspected every {i % 12 + 1} weeks."
            )
            y -= 17
        c.showPage()
    c.save()
    return path
