"""`kb bench ingest`: end-to-end chunks/s beside the raw embedding rate of the same model, and the peak
memory of a fresh process ingesting a long PDF.

End to end means what an admin waits for: a queued job through parsing, chunking, embedding and
indexing into a fresh Milvus Lite. The baseline re-embeds exactly the chunks that run produced, with the
same model and batch size, and nothing else, so the ratio says how much the rest of the pipeline costs.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from app.container import Container, lite_layout
from app.settings import Settings
from evaluation.scratch import scratch_settings
from retrieval.milvus_connect import start_lite_server

BENCH_KB = "bench"
Progress = Callable[[str], None]


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
class ChildRun:
    """What the measuring child process sends back."""

    chunks: int = 0
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class MemoryBench:
    pages: int
    chunks: int
    seconds: float
    peak_rss_mb: float
    baseline_pages: int
    baseline_peak_rss_mb: float


@dataclass
class IngestBenchReport:
    model: str
    batch_size: int
    datasets: list[IngestBench] = field(default_factory=list)
    memory: MemoryBench | None = None


def bench_ingest(
    settings: Settings, datasets: Sequence[Path], *, pdf_pages: int, progress: Progress = lambda _: None
) -> IngestBenchReport:
    """Each dataset into a fresh KB_HOME, then (pdf_pages > 0) peak RSS on a generated PDF."""
    report = IngestBenchReport(model=settings.embedding.model, batch_size=settings.embedding.batch_size)
    for folder in datasets:
        progress(f"ingesting {folder} ...")
        report.datasets.append(bench_dataset(settings, folder))
    if pdf_pages:
        progress(f"peak RSS: ingesting a generated {pdf_pages}-page PDF in a fresh process ...")
        with tempfile.TemporaryDirectory(prefix="kb-bench-pdf-") as tmp:
            long_pdf = make_long_pdf(Path(tmp) / f"long-{pdf_pages}p.pdf", pdf_pages)
            short_pdf = make_long_pdf(Path(tmp) / "short-5p.pdf", 5)
            report.memory = bench_memory(settings, long_pdf, short_pdf, pages=pdf_pages, baseline_pages=5)
    return report


def bench_dataset(settings: Settings, dataset: Path) -> IngestBench:
    """One folder through a queued job into a throw-away KB_HOME, never the user's Milvus or database."""
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        fresh = scratch_settings(settings, Path(tmp))
        # Served by its own process, as under `kb up`, so that Milvus' work does not share our GIL.
        server = start_lite_server(lite_layout(fresh))
        try:
            container = Container(fresh)
            container.warm_up_ingest()
            t0 = time.perf_counter()
            job_id = container.documents.submit([dataset], kb=BENCH_KB, uploads_dir=Path(tmp) / "uploads")
            container.worker().run(until_idle=True)
            seconds = time.perf_counter() - t0
            view = container.jobs.get(job_id)
            assert view is not None  # the job was created above
            texts = [
                c.text
                for item in view.items
                if item.status == "indexed"
                for c in container.store.document_chunks(BENCH_KB, item.doc_id)
            ]
            batch = fresh.embedding.batch_size
            t1 = time.perf_counter()
            for start in range(0, len(texts), batch):
                container.embedder.embed(texts[start : start + batch], "passage")
            raw_s = time.perf_counter() - t1
            container.store.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    chunks = len(texts)
    rate = chunks / seconds if seconds else 0.0
    raw = chunks / raw_s if raw_s else 0.0
    return IngestBench(
        dataset=str(dataset), files=view.job.files_total, failed=view.job.files_failed, pages=view.job.pages_done,
        chunks=chunks, seconds=round(seconds, 2), chunks_per_s=round(rate, 1), raw_embed_chunks_per_s=round(raw, 1),
        ratio=round(rate / raw, 3) if raw else 0.0, stage_ms={k: round(v) for k, v in (view.job.timings or {}).items()},
    )  # fmt: skip


def bench_memory(settings: Settings, pdf: Path, baseline_pdf: Path, *, pages: int, baseline_pages: int) -> MemoryBench:
    """Peak RSS of a fresh process ingesting a long PDF (what `kb ingest --wait` does without `kb up`),
    beside the same for a short one."""
    long_run = ingest_in_fresh_process(settings, pdf)
    short_run = ingest_in_fresh_process(settings, baseline_pdf)
    return MemoryBench(
        pages=pages, chunks=long_run.chunks, seconds=long_run.seconds, peak_rss_mb=long_run.peak_rss_mb,
        baseline_pages=baseline_pages, baseline_peak_rss_mb=short_run.peak_rss_mb,
    )  # fmt: skip


def ingest_in_fresh_process(settings: Settings, pdf: Path) -> ChildRun:
    """Ingest one file in a spawned interpreter with its own throw-away KB_HOME: a fresh process, as a
    user's, not one that already holds this benchmark's models and indexes."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    with tempfile.TemporaryDirectory(prefix="kb-bench-mem-") as home:
        child = context.Process(target=_ingest_child, args=(scratch_settings(settings, Path(home)), pdf, send))
        child.start()
        send.close()  # the child holds the only writer: recv() then ends when it exits
        try:
            run: ChildRun = receive.recv()
        except EOFError:
            run = ChildRun(error="the child process died without a result")
        child.join()
    if run.error or child.exitcode:
        raise RuntimeError(f"ingest of {pdf.name} in a fresh process failed (exit {child.exitcode}): {run.error}")
    return run


def _ingest_child(settings: Settings, pdf: Path, result: Connection) -> None:
    t = time.perf_counter()
    try:
        container = Container(settings)
        job_id = container.documents.submit([pdf], kb=BENCH_KB, uploads_dir=container.uploads_dir)
        container.worker().run(until_idle=True)
        view = container.jobs.get(job_id)
        chunks = view.job.chunks_done if view is not None else 0
        container.store.close()
    except Exception as exc:  # noqa: BLE001  (reported to the parent, which raises)
        result.send(ChildRun(error=f"{type(exc).__name__}: {exc}"))
        return
    result.send(ChildRun(chunks=chunks, seconds=round(time.perf_counter() - t, 1), peak_rss_mb=_peak_rss_mb()))


def _peak_rss_mb() -> float:
    """This process's peak resident set, from /proc's VmHWM.

    Not getrusage: Linux carries ru_maxrss over fork and exec, so a child spawned by this benchmark
    (which holds models and indexes) would report the parent's peak; VmHWM belongs to the address space
    the child got at exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    # No /proc: getrusage, an upper bound for the reason above (macOS counts bytes, others kilobytes).
    unit = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit)


def make_long_pdf(path: Path, pages: int) -> Path:
    """A text PDF of `pages` pages (about 44 lines each), for the memory benchmark."""
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
