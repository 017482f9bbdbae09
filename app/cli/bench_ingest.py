"""`kb bench ingest`: ingestion throughput against the raw embedding rate, and peak memory on a long PDF."""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from app.cli._common import bench_cli, fail, load_settings
from app.cli.eval import scratch_settings

_SHARED_EVAL = Path(__file__).resolve().parents[2].parent / "shared" / "eval"
_DEFAULT_SETS = [_SHARED_EVAL / "xquad_en" / "docs", _SHARED_EVAL / "docs_formats"]
_BEGIN, _END = "<!-- bench:ingest:begin -->", "<!-- bench:ingest:end -->"


@bench_cli.command("ingest")
def bench_ingest(
    dataset: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option("--dataset", help="Folder to ingest (repeat); default: shared xquad_en docs and docs_formats."),
    ] = None,
    pdf_pages: Annotated[int, typer.Option(min=0, help="Pages of the generated PDF for peak RSS; 0 skips it.")] = 500,
    write: Annotated[Optional[Path], typer.Option(help="Markdown file to update, e.g. docs/BENCHMARKS.md.")] = None,  # noqa: UP045
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here.")] = None,  # noqa: UP045
) -> None:
    """Chunks/s end to end (fresh Milvus Lite, real jobs) beside raw embedding chunks/s of the same model."""
    from app.container import Container, lite_layout
    from ingest.benchmark import bench_dataset, bench_memory, make_long_pdf
    from retrieval.milvus_connect import start_lite_server

    settings = load_settings()
    sets = dataset or _DEFAULT_SETS
    missing = [str(d) for d in sets if not d.is_dir()]
    if missing:
        fail(f"no such dataset folder: {', '.join(missing)}")

    @contextmanager
    def build(home: Path) -> Iterator[Container]:
        # Never the user's Milvus or database: a throw-away KB_HOME with its own Lite and SQLite.
        fresh = scratch_settings(settings, home)
        # Served by its own process, as under `kb up`, so that Milvus' work does not share our GIL.
        server = start_lite_server(lite_layout(fresh))
        try:
            container = Container(fresh)
            yield container
            container.store.close()
        finally:
            server.terminate()
            server.wait(timeout=30)

    results = []
    for folder in sets:
        typer.echo(f"ingesting {folder} ...", err=True)
        results.append(bench_dataset(build, folder))
    memory = None
    if pdf_pages:
        with tempfile.TemporaryDirectory(prefix="kb-bench-pdf-") as tmp:
            typer.echo(f"peak RSS: ingesting a generated {pdf_pages}-page PDF in a fresh process ...", err=True)
            long_pdf = make_long_pdf(Path(tmp) / f"long-{pdf_pages}p.pdf", pdf_pages)
            short_pdf = make_long_pdf(Path(tmp) / "short-5p.pdf", 5)
            memory = bench_memory(long_pdf, short_pdf, pages=pdf_pages, baseline_pages=5)
    data: dict[str, Any] = {
        "model": settings.embedding.model,
        "batch_size": settings.embedding.batch_size,
        "datasets": [dataclasses.asdict(r) for r in results],
        "memory": dataclasses.asdict(memory) if memory else None,
    }
    table = _markdown(data)
    typer.echo(table)
    if json_out:
        json_out.write_text(json.dumps(data, indent=2))
    if write:
        _update(write, table)


def _markdown(data: dict[str, Any]) -> str:
    lines = [
        f"Model `{data['model']}`, batch {data['batch_size']}, fresh Milvus Lite per dataset, jobs run by one worker.",
        "",
        "| dataset | files (failed) | pages | chunks | end to end | chunks/s | raw embedding chunks/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in data["datasets"]:
        name = f"{Path(r['dataset']).parent.name}/{Path(r['dataset']).name}"
        cells = [name, f"{r['files']} ({r['failed']})", r["pages"], r["chunks"], f"{r['seconds']} s",
                 r["chunks_per_s"], r["raw_embed_chunks_per_s"], f"{r['ratio']:.2f}"]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines.append("")
    stages = [
        f"{Path(r['dataset']).name}: " + ", ".join(f"{k} {v}" for k, v in r["stage_ms"].items())
        for r in data["datasets"]
    ]
    lines.append("Stage totals (ms): " + "; ".join(stages))
    m = data.get("memory")
    if m:
        lines += [
            "",
            f"Peak RSS of a fresh `kb ingest --wait` process: {m['peak_rss_mb']} MB for a {m['pages']}-page PDF "
            f"({m['chunks']} chunks, {m['seconds']} s), against {m['baseline_peak_rss_mb']} MB for a "
            f"{m['baseline_pages']}-page PDF.",
        ]
    return "\n".join(lines)


def _update(path: Path, table: str) -> None:
    section = (
        f"{_BEGIN}\n## Ingestion throughput and memory ({date.today().isoformat()})\n\n"
        "Command: `kb bench ingest --write docs/BENCHMARKS.md` (defaults: ../shared/eval/xquad_en/docs and "
        "../shared/eval/docs_formats; a generated 500-page PDF for peak RSS). Each dataset goes into a fresh "
        "KB_HOME served by its own `milvus-lite server` process, as under `kb up`.\n\n"
        f"{table}\n{_END}"
    )
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(_BEGIN) + ".*?" + re.escape(_END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
