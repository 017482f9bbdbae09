"""The benchmark sections of docs/BENCHMARKS.md: each lives between two HTML comments and is replaced,
not appended, when its command runs again."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from evaluation.bench_ingest import IngestBenchReport
from evaluation.bench_retrieval import BenchReport

RETRIEVAL_MARKERS = ("<!-- kb bench retrieval: begin -->", "<!-- kb bench retrieval: end -->")
INGEST_MARKERS = ("<!-- bench:ingest:begin -->", "<!-- bench:ingest:end -->")
WORKERS_MARKERS = ("<!-- bench:workers:begin -->", "<!-- bench:workers:end -->")
P95_BUDGET_MS = 250.0


def replace_section(path: Path, markers: tuple[str, str], body: str) -> None:
    """Put `body` between the markers in `path`, replacing what was there, or append it."""
    begin, end = markers
    section = f"{begin}\n{body}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if begin in text and end in text[text.index(begin) :]:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")


def _today() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d}"


def retrieval_advice(report: BenchReport) -> str:
    within = [s.chunks for s in report.sizes if s.kb_p95_ms <= P95_BUDGET_MS]
    over = [s.chunks for s in report.sizes if s.kb_p95_ms > P95_BUDGET_MS]
    if not over:
        return (
            f"kb's p95 stayed within {P95_BUDGET_MS:.0f} ms up to {max(within):,} chunks in Milvus Lite; "
            "past that size, measure again before choosing Milvus Standalone."
        )
    limit = max((c for c in within if c < min(over)), default=0)
    return (
        f"kb's p95 passed {P95_BUDGET_MS:.0f} ms at {min(over):,} chunks in Milvus Lite (BM25 runs in-process there). "
        f"Advice: past about {limit:,} chunks, run Milvus Standalone (`KB_MILVUS__URI`, same code)."
    )


def retrieval_section(report: BenchReport, command: str) -> str:
    return "\n".join(
        [
            f"## Retrieval latency at scale ({_today()})",
            "",
            "Command (from the repository root; passage embeddings cached under `$KB_HOME/cache` by an earlier",
            "`kb eval retrieval` run or by this command):",
            "",
            "```bash",
            command,
            "```",
            "",
            f"Data: `{report.dataset}` passages, grown to each size with variants (`evaluation/bench_retrieval.py`:",
            "sentence order rotated, vector moved by Gaussian noise σ=0.02 and re-normalised); one Milvus Lite",
            f"collection per run, hybrid mode, {report.limit} hits per query, analyzer `{report.analyzer}`, queries",
            "are the data set's queries.",
            f"Machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, shared with other work (noisy). "
            "Milliseconds.",
            "**kb** = `QueryPipeline.candidates` (language check, embed, filter build, hybrid search, hit objects).",
            "**bare calls** = the same embedding call plus the same Milvus `hybrid_search` call on a pymilvus",
            "client of the benchmark's own (`evaluation/bare_calls.py`), each timed alone.",
            "**LangChain** = langchain-milvus `similarity_search` (dense only, default index) with the same model.",
            "",
            report.table(),
            "",
            retrieval_advice(report),
        ]
    )


def ingest_table(report: IngestBenchReport) -> str:
    lines = [
        f"Model `{report.model}`, batch {report.batch_size}, fresh Milvus Lite per dataset, jobs run by one worker.",
        "",
        "| dataset | files (failed) | pages | chunks | end to end | chunks/s | raw embedding chunks/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.datasets:
        name = f"{Path(r.dataset).parent.name}/{Path(r.dataset).name}"
        cells = [name, f"{r.files} ({r.failed})", r.pages, r.chunks, f"{r.seconds} s",
                 r.chunks_per_s, r.raw_embed_chunks_per_s, f"{r.ratio:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    stages = [
        f"{Path(r.dataset).name}: " + ", ".join(f"{k} {v}" for k, v in r.stage_ms.items()) for r in report.datasets
    ]
    lines.append("Stage totals (ms): " + "; ".join(stages))
    m = report.memory
    if m:
        lines += [
            "",
            f"Peak RSS of a fresh process ingesting a PDF (as `kb ingest --wait` does without `kb up`): "
            f"{m.peak_rss_mb} MB for a {m.pages}-page PDF ({m.chunks} chunks, {m.seconds} s), against "
            f"{m.baseline_peak_rss_mb} MB for a {m.baseline_pages}-page PDF.",
        ]
    return "\n".join(lines)


def ingest_section(report: IngestBenchReport, command: str) -> str:
    return (
        f"## Ingestion throughput and memory ({_today()})\n\n"
        f"Command: `{command}`. Each dataset goes into a fresh KB_HOME served by its own `milvus-lite server` "
        "process, as under `kb up`; peak RSS is measured in a freshly spawned process with its own KB_HOME.\n\n"
        f"{ingest_table(report)}"
    )


def workers_section(table: str, command: str) -> str:
    return (
        f"## Ingestion with several worker processes ({_today()})\n\n"
        f"Command: `{command}`. One job of the whole corpus, shared file by file by N `kb worker` processes "
        "(started and warmed up before the job is queued); the clock runs from the job's submission to its "
        "close. Each worker's PyTorch gets cores / N threads, so that the workers do not oversubscribe the CPU.\n\n"
        f"{table}"
    )
