"""`kb bench workers`: ingestion throughput of 1, 2, 4 ... `kb worker` processes sharing one job.

The same generated corpus (markdown files of a few pages each) is ingested once per worker count, each
time into a fresh KB_HOME (SQLite registry, one `milvus-lite server`, as under `kb up`) by that many real
worker processes, started and warmed up (models loaded) before the job is queued. The clock runs from the
job's submission to its close. Each worker's PyTorch gets an equal share of the cores (at least one
thread), so that N workers do not oversubscribe the CPU; the speed-up is against one worker measured in
the same run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.container import Container, lite_layout
from app.settings import Settings
from evaluation.scratch import scratch_settings
from retrieval.milvus_connect import start_lite_server

BENCH_KB = "bench"
READY = "ready: polling the job queue"
Progress = Callable[[str], None]

_TEXT = (
    "the archive keeps contracts invoices and audit reports for seven years before review by the records "
    "office which decides whether a file is destroyed or moved to long term storage in the basement vault "
    "requests for access go through the service desk and are answered within three working days unless "
    "the document is classified in which case the security officer signs the request first"
)
_WORDS = _TEXT.split(" ")


@dataclass(frozen=True)
class WorkerRun:
    workers: int
    threads_per_worker: int
    seconds: float
    files: int
    chunks: int
    files_per_s: float
    chunks_per_s: float
    speedup: float
    share: list[int]  # files each worker indexed


@dataclass
class WorkersBenchReport:
    model: str
    cores: int
    files: int
    pages_per_file: int
    claim_files: int
    runs: list[WorkerRun] = field(default_factory=list)


def make_corpus(folder: Path, files: int, pages: int) -> Path:
    """`files` markdown files of `pages` pages each (about 350 words a page), deterministic."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        sections = []
        for p in range(pages):
            words = [_WORDS[(n * 7 + p * 13 + i * 5) % len(_WORDS)] for i in range(350)]
            sections.append(f"## Page {p + 1}\n\nFile {n} page {p + 1}: " + " ".join(words) + ".\n")
        (folder / f"doc-{n:03}.md").write_text(f"# Document {n}\n\n" + "\n".join(sections), encoding="utf-8")
    return folder


def bench_workers(
    settings: Settings, *, counts: Sequence[int], files: int, pages: int, claim_files: int,
    progress: Progress = lambda _: None,
) -> WorkersBenchReport:  # fmt: skip
    cores = os.cpu_count() or 1
    report = WorkersBenchReport(
        model=settings.embedding.model, cores=cores, files=files, pages_per_file=pages, claim_files=claim_files
    )
    with tempfile.TemporaryDirectory(prefix="kb-bench-workers-") as tmp:
        corpus = make_corpus(Path(tmp) / "corpus", files, pages)
        base: float | None = None
        for n in counts:
            progress(f"{n} worker process(es) ...")
            run = _run(settings, corpus, n, cores=cores, claim_files=claim_files, home=Path(tmp) / f"home-{n}")
            base = base or run.files_per_s
            run = WorkerRun(**{**run.__dict__, "speedup": round(run.files_per_s / base, 2) if base else 0.0})
            report.runs.append(run)
            progress(f"{n} worker(s): {run.seconds} s, {run.files_per_s} files/s, x{run.speedup}")
    return report


def _run(settings: Settings, corpus: Path, n: int, *, cores: int, claim_files: int, home: Path) -> WorkerRun:
    fresh = scratch_settings(settings, home)
    threads = max(1, cores // n)
    env = {
        **os.environ,
        "KB_HOME": str(home),
        "KB_MILVUS__URI": "",
        "KB_DATABASE__URL": "",
        "KB_INGEST__CLAIM_FILES": str(claim_files),
        "KB_LOG_LEVEL": "INFO",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    server = start_lite_server(lite_layout(fresh))
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        container = Container(fresh)
        for i in range(n):
            log = home / f"worker-{i}.log"
            with log.open("wb") as handle:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "worker"], env=env, stdin=subprocess.DEVNULL,
                    stdout=handle, stderr=subprocess.STDOUT,
                )  # fmt: skip
            procs.append((proc, log))
        _wait_ready(procs)
        t0 = time.perf_counter()
        job_id = container.documents.submit([corpus], kb=BENCH_KB, uploads_dir=container.uploads_dir)
        while True:
            view = container.jobs.get(job_id)
            assert view is not None  # created above
            if view.job.state in ("done", "failed", "cancelled"):
                break
            for proc, log in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        if view.job.state != "done" or view.job.files_failed:
            raise RuntimeError(f"the benchmark job ended {view.job.state}: {view.job.error}")
        names = {f"{socket.gethostname()}:{proc.pid}" for proc, _ in procs}
        share = sorted((sum(i.worker == name for i in view.items) for name in names), reverse=True)
        container.store.close()
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            proc.wait(timeout=60)
        server.terminate()
        server.wait(timeout=30)
    chunks = view.job.chunks_done
    return WorkerRun(
        workers=n, threads_per_worker=threads, seconds=round(seconds, 2), files=view.job.files_total, chunks=chunks,
        files_per_s=round(view.job.files_total / seconds, 2), chunks_per_s=round(chunks / seconds, 1), speedup=1.0,
        share=share,
    )  # fmt: skip


def _wait_ready(procs: list[tuple[subprocess.Popen[bytes], Path]], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(READY in log.read_text(errors="replace") for _, log in procs):
        for proc, log in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a worker exited before it was ready: {log.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not get ready")
        time.sleep(0.2)


def workers_table(report: WorkersBenchReport) -> str:
    lines = [
        f"Model `{report.model}`, {report.cores} cores, {report.files} markdown files of {report.pages_per_file} "
        f"pages, claims of at least {report.claim_files} files (guided: a share of what is left per worker); "
        "fresh KB_HOME (SQLite, one Milvus Lite server) per row.",
        "",
        "| worker processes | torch threads each | seconds | files/s | chunks/s | speed-up vs 1 | files per worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.runs:
        cells = [r.workers, r.threads_per_worker, r.seconds, r.files_per_s, r.chunks_per_s, f"x{r.speedup:.2f}",
                 " / ".join(str(s) for s in r.share)]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)
