"""`kb bench retrieval`: retrieval latency at growing index sizes, written to docs/BENCHMARKS.md."""

from __future__ import annotations

import platform
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli._common import bench_cli, fail, load_settings
from app.cli.eval import JsonFileOpt, scratch_settings, write_json

BEGIN, END = "<!-- kb bench retrieval: begin -->", "<!-- kb bench retrieval: end -->"
P95_BUDGET_MS = 250.0


@bench_cli.command("retrieval")
def bench_retrieval_cmd(
    dataset: Annotated[Path, typer.Option("--dataset", help="BEIR-layout set whose passages fill the index.")],
    sizes: Annotated[str, typer.Option(help="Comma-separated chunk counts.")] = "5000,20000,50000",
    queries: Annotated[int, typer.Option(min=1, help="Queries timed per size.")] = 100,
    json_file: JsonFileOpt = None,
    markdown: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--markdown", help="Write the table into this file (e.g. docs/BENCHMARKS.md)."),
    ] = None,
) -> None:
    """p50/p95 of kb's retrieval (embed + hybrid search, no rerank, no LLM) beside the bare calls and LangChain."""
    from app.container import Container
    from retrieval.bench import bench_retrieval
    from retrieval.evaluate import DatasetError, cached_passage_vectors, load_beir

    try:
        counts = sorted({int(s) for s in sizes.split(",") if s.strip()})
    except ValueError:
        fail(f"--sizes takes comma-separated integers, got {sizes!r}", 2)
    if not counts or counts[0] < 1:
        fail("--sizes needs at least one positive count", 2)
    try:
        data = load_beir(dataset)
    except (DatasetError, OSError) as exc:
        fail(str(exc), 2)
    settings = load_settings()
    with tempfile.TemporaryDirectory(prefix="kb-bench-") as tmp:
        container = Container(scratch_settings(settings, Path(tmp)))
        try:
            typer.echo(f"embedding {len(data.corpus)} passages (cached)", err=True)
            vectors = cached_passage_vectors(
                container.embedder, [d.body for d in data.corpus], data.fingerprint, settings.home / "cache"
            )
            report = bench_retrieval(
                data, vectors, sizes=counts, pipeline=container.query, store=container.store,
                embedder=container.embedder, work_dir=Path(tmp), queries=queries,
                limit=settings.retrieval.candidates, analyzer=settings.milvus.analyzer,
                progress=lambda msg: typer.echo(msg, err=True),
            )  # fmt: skip
        finally:
            container.store.close()
    typer.echo(report.table())
    write_json(json_file, report.as_json())
    if markdown is not None:
        _write_markdown(markdown, report.table(), report, dataset)


def _advice(report: object) -> str:
    from retrieval.bench import BenchReport

    assert isinstance(report, BenchReport)
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


def _write_markdown(path: Path, table: str, report: object, dataset: Path) -> None:
    command = "kb bench retrieval " + " ".join(shlex.quote(a) for a in sys.argv[3:])
    section = "\n".join(
        [
            BEGIN,
            f"## Retrieval latency at scale ({datetime.now(UTC):%Y-%m-%d})",
            "",
            "Command (from the repository root; passage embeddings cached under `$KB_HOME/cache` by an earlier",
            "`kb eval retrieval` run or by this command):",
            "",
            "```bash",
            command,
            "```",
            "",
            f"Data: `{dataset.name}` passages, grown to each size with variants (`retrieval/bench.py`: sentence",
            "order rotated, vector moved by Gaussian noise σ=0.02 and re-normalised); one Milvus Lite collection",
            f"per run, hybrid mode, {getattr(report, 'limit', '?')} hits per query, analyzer "
            f"`{getattr(report, 'analyzer', '?')}`, queries are the data set's queries.",
            f"Machine: {platform.machine()}, {_cpus()} CPUs, shared with other work (noisy). Milliseconds.",
            "**kb** = `QueryPipeline.candidates` (language check, embed, filter build, hybrid search, hit objects).",
            "**bare calls** = the same embedding call plus the same Milvus `hybrid_search` call, each timed alone.",
            "**LangChain** = langchain-milvus `similarity_search` (dense only, default index) with the same model.",
            "",
            table,
            "",
            _advice(report),
            END,
        ]
    )
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {path}", err=True)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
