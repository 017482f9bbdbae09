"""`kb eval ...` and `kb bench ...`, registered on the `kb` CLI as plugins (entry-point group
`kb.commands`). Commands parse options, call a service in this package and print: a human summary, or
with `--json` one JSON document on stdout; `--output FILE` also writes that document to a file, and
`--markdown FILE` updates a section of docs/BENCHMARKS.md. Progress goes to stderr.

Loaded on every `kb` start: heavy imports stay inside the commands.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.cli._common import JsonOpt, KbOpt, fail, load_settings
from evaluation.reports import to_json, write_text

# Without the `eval` extra, fail when kb loads this plugin, so that `kb` names the extra to install,
# rather than halfway through a run. find_spec only looks the modules up; it imports nothing.
for _module in ("reportlab", "langchain_milvus", "httpx_sse"):
    if importlib.util.find_spec(_module) is None:
        raise ModuleNotFoundError(f"No module named {_module!r}", name=_module)

eval_cli = typer.Typer(help="Measure retrieval and answer quality on evaluation sets.", no_args_is_help=True)
bench_cli = typer.Typer(help="Measure speed and memory; results go to docs/BENCHMARKS.md.", no_args_is_help=True)

OutputOpt = Annotated[
    Optional[Path],  # noqa: UP045  (Typer reads the annotation at runtime)
    typer.Option("--output", help="Also write the JSON document to this file.", dir_okay=False),
]
MarkdownOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--markdown", help="Update this command's section of this file (e.g. docs/BENCHMARKS.md).", dir_okay=False
    ),
]
DatasetOpt = Annotated[Path, typer.Option("--dataset", help="Data set folder.")]


def _progress(message: str) -> None:
    typer.echo(message, err=True)


def _print(report: object, human: str, *, as_json: bool, output: Path | None) -> None:
    document = to_json(report)
    if output is not None:
        write_text(output, document)
        _progress(f"wrote {output}")
    typer.echo(document if as_json else human)


def _command(name: str, options: Sequence[tuple[str, object]]) -> str:
    """The command line as documentation shows it, rebuilt from the parsed options."""
    return " ".join([name, *(f"{flag} {shlex.quote(str(value))}" for flag, value in options)])


# -- kb eval ------------------------------------------------------------------------------------------


@eval_cli.command("retrieval")
def eval_retrieval(
    dataset: DatasetOpt,
    modes: Annotated[str, typer.Option(help="Comma-separated: bm25, dense, hybrid, rerank, langchain.")] = (
        "bm25,dense,hybrid,rerank,langchain"
    ),
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """nDCG@10, Recall@10/@100, MRR@10 and query latency per mode on a BEIR-layout data set."""
    from evaluation.datasets import load_beir
    from evaluation.retrieval_eval import evaluate_retrieval, parse_modes

    try:
        wanted = parse_modes(modes)
        data = load_beir(dataset)
    except (ValueError, OSError) as exc:  # DatasetError is a ValueError
        fail(str(exc), 2)
    report = evaluate_retrieval(data, load_settings(), wanted, progress=_progress)
    _print(report, report.table(), as_json=as_json, output=output)


@eval_cli.command("qa")
def eval_qa(  # noqa: PLR0917  (Typer options)
    dataset: DatasetOpt,
    llm_limit: Annotated[int, typer.Option(min=0, help="Ask the model at most this many questions.")] = 200,
    extractive_limit: Annotated[
        int, typer.Option(min=0, help="Extractive answers (no model) to at most this many questions (0: all).")
    ] = 0,
    compare: Annotated[str, typer.Option(help="Also report hits per requested mode, e.g. bm25,hybrid.")] = "",
    context_expand: Annotated[
        str,
        typer.Option(
            help="Also report how often the gold answer is in the assembled context, per small-to-big setting "
            "(neighbouring chunks per side), e.g. 0,1,2."
        ),
    ] = "",
    details: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write each question the model answered, in every answer mode, to this jsonl file."),
    ] = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Document hit@1/@5, extractive answers holding the gold answer and, with the model server up, answer
    EM/F1, refusal accuracy, citation precision, and generative vs extractive vs auto answers."""
    from evaluation.datasets import load_qa
    from evaluation.qa_eval import QAEvalError, evaluate_qa, parse_compare

    try:
        modes = parse_compare(compare)
        expand = [int(e) for e in context_expand.split(",") if e.strip()]
        data = load_qa(dataset)
    except (ValueError, OSError) as exc:
        fail(str(exc), 2)
    try:
        report = evaluate_qa(
            data, load_settings(), llm_limit=llm_limit, extractive_limit=extractive_limit, compare=modes,
            context_expand=expand, progress=_progress,
        )  # fmt: skip
    except QAEvalError as exc:
        fail(str(exc))
    if details is not None:
        write_text(details, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in report.details))
        _progress(f"wrote {details}")
    report.details = []
    _print(report, report.table(), as_json=as_json, output=output)


@eval_cli.command("support")
def eval_support(
    dataset: DatasetOpt,
    limit: Annotated[int, typer.Option(min=0, help="At most this many questions (0: all).")] = 0,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Calibrate the support thresholds: supported claims against claims citing the wrong passage or
    stating another fact (evaluation/support_eval.py)."""
    from app.container import Container
    from evaluation.datasets import load_qa
    from evaluation.support_eval import evaluate_support

    try:
        data = load_qa(dataset)
    except (ValueError, OSError) as exc:
        fail(str(exc), 2)
    settings = load_settings()
    report = evaluate_support(data, settings, Container(settings).embedder, limit=limit, progress=_progress)
    _print(report, report.table(), as_json=as_json, output=output)


@eval_cli.command("refusal")
def eval_refusal(  # noqa: PLR0917  (Typer options)
    qa: Annotated[Path, typer.Option(help="Answerable questions (jsonl), e.g. an XQuAD set's qa.jsonl.")],
    ood: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Out-of-domain questions (jsonl); default: kb's own set in the questions' language."),
    ] = None,
    docs: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Documents to ingest into --kb when it is empty; default the QA file's docs/."),
    ] = None,
    kb: Annotated[str, typer.Option("--kb", help="Knowledge base holding the QA set's documents.")] = "xquad_en",
    limit: Annotated[int, typer.Option(min=0, help="At most this many answerable questions (0: all).")] = 0,
    max_answerable: Annotated[float, typer.Option(help="Target: refuse at most this share of answerable.")] = 0.05,
    min_ood: Annotated[float, typer.Option(help="Target: refuse at least this share of out-of-domain.")] = 0.90,
    margin: Annotated[float, typer.Option(help="Calibrate for max-answerable minus this (room for unseen).")] = 0.01,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Refusal rates of answerable vs out-of-domain questions, at the configured and the calibrated threshold."""
    from evaluation.datasets import DatasetError, QuestionFile
    from evaluation.refusal import Targets, evaluate_refusal

    try:
        report = evaluate_refusal(
            load_settings(), QuestionFile.at(qa), ood=QuestionFile.at(ood) if ood else None, docs=docs, kb=kb,
            limit=limit or None, targets=Targets(max_answerable, min_ood, margin), progress=_progress,
        )  # fmt: skip
    except DatasetError as exc:
        fail(str(exc), 2)
    _print(report, report.text(), as_json=as_json, output=output)


@eval_cli.command("followup")
def eval_followup(  # noqa: PLR0917  (Typer options)
    dataset: DatasetOpt,
    followups: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Follow-up questions (jsonl); default: kb's own set for the data set's folder name."),
    ] = None,
    other: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="A QA data set in the other language: also switch from its questions."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many topic-switch questions.")] = 200,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Top source of second questions in a conversation: topic switches and follow-ups, searched alone,
    always rewritten (kb before follow-ups were judged) and as kb searches them (evaluation/followup_eval.py)."""
    from evaluation.datasets import DatasetError, load_qa
    from evaluation.followup_eval import evaluate_followups, load_followups, packaged_followups, switches

    try:
        data = load_qa(dataset)
        turns = {"switch": switches(data, limit)}
        if other is not None:
            turns["switch from the other language"] = switches(data, limit, load_qa(other))
        turns["follow-up"] = load_followups(followups or packaged_followups(dataset.name), data)
    except (DatasetError, OSError) as exc:
        fail(str(exc), 2)
    report = evaluate_followups(load_settings(), data, turns, progress=_progress)
    _print(report, report.table(), as_json=as_json, output=output)


# -- kb bench -----------------------------------------------------------------------------------------


@bench_cli.command("ingest")
def bench_ingest(
    dataset: Annotated[list[Path], typer.Option("--dataset", help="Folder to ingest (repeat).")],
    pdf_pages: Annotated[int, typer.Option(min=0, help="Pages of the generated PDF for peak RSS; 0 skips it.")] = 500,
    markdown: MarkdownOpt = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Chunks/s end to end (fresh Milvus Lite, real jobs) beside raw embedding chunks/s of the same model."""
    from evaluation.bench_ingest import bench_ingest as run
    from evaluation.markdown import INGEST_MARKERS, ingest_section, ingest_table, replace_section

    missing = [str(d) for d in dataset if not d.is_dir()]
    if missing:
        fail(f"no such dataset folder: {', '.join(missing)}", 2)
    report = run(load_settings(), dataset, pdf_pages=pdf_pages, progress=_progress)
    _print(report, ingest_table(report), as_json=as_json, output=output)
    if markdown is not None:
        options = [*(("--dataset", d) for d in dataset), ("--pdf-pages", pdf_pages), ("--markdown", markdown)]
        replace_section(markdown, INGEST_MARKERS, ingest_section(report, _command("kb bench ingest", options)))
        _progress(f"wrote {markdown}")


@bench_cli.command("workers")
def bench_workers(  # noqa: PLR0917  (Typer options)
    workers: Annotated[str, typer.Option(help="Comma-separated worker process counts.")] = "1,2,4",
    files: Annotated[int, typer.Option(min=1, help="Generated markdown files in the corpus.")] = 40,
    pages: Annotated[int, typer.Option(min=1, help="Pages (about 350 words each) per file.")] = 3,
    claim_files: Annotated[int, typer.Option(min=1, help="Files a worker claims at a time.")] = 2,
    markdown: MarkdownOpt = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Files/s and chunks/s of one job shared by 1, 2, 4 ... `kb worker` processes, and the speed-up."""
    from evaluation.bench_workers import bench_workers as run
    from evaluation.bench_workers import workers_table
    from evaluation.markdown import WORKERS_MARKERS, replace_section, workers_section

    try:
        counts = [int(n) for n in workers.split(",") if n.strip()]
    except ValueError:
        fail(f"--workers takes comma-separated numbers, not {workers!r}", 2)
    if not counts or min(counts) < 1:
        fail("--workers needs at least one count of 1 or more", 2)
    report = run(load_settings(), counts=counts, files=files, pages=pages, claim_files=claim_files, progress=_progress)
    table = workers_table(report)
    _print(report, table, as_json=as_json, output=output)
    if markdown is not None:
        options = [("--workers", workers), ("--files", files), ("--pages", pages), ("--claim-files", claim_files),
                   ("--markdown", markdown)]  # fmt: skip
        replace_section(markdown, WORKERS_MARKERS, workers_section(table, _command("kb bench workers", options)))
        _progress(f"wrote {markdown}")


@bench_cli.command("retrieval")
def bench_retrieval(  # noqa: PLR0917  (Typer options)
    dataset: Annotated[Path, typer.Option("--dataset", help="BEIR-layout set whose passages fill the index.")],
    sizes: Annotated[str, typer.Option(help="Comma-separated chunk counts.")] = "5000,20000,50000",
    queries: Annotated[int, typer.Option(min=1, help="Queries timed per size.")] = 100,
    markdown: MarkdownOpt = None,
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """p50/p95 of kb's retrieval (embed + hybrid search, no rerank, no LLM) beside the bare calls and LangChain."""
    from evaluation.bench_retrieval import bench_retrieval as run
    from evaluation.bench_retrieval import parse_sizes
    from evaluation.datasets import load_beir
    from evaluation.markdown import RETRIEVAL_MARKERS, replace_section, retrieval_section

    try:
        counts = parse_sizes(sizes)
        data = load_beir(dataset)
    except (ValueError, OSError) as exc:
        fail(str(exc), 2)
    report = run(data, load_settings(), sizes=counts, queries=queries, progress=_progress)
    _print(report, report.table(), as_json=as_json, output=output)
    if markdown is not None:
        options = [("--dataset", dataset), ("--sizes", ",".join(map(str, counts))), ("--queries", queries),
                   ("--markdown", markdown)]  # fmt: skip
        replace_section(markdown, RETRIEVAL_MARKERS, retrieval_section(report, _command("kb bench retrieval", options)))
        _progress(f"wrote {markdown}")


@bench_cli.command("e2e")
def bench_e2e(  # noqa: PLR0917  (Typer options)
    questions: Annotated[Path, typer.Option(help="QA file (jsonl with 'question'), e.g. an XQuAD set's qa.jsonl.")],
    concurrency: Annotated[str, typer.Option(help="Comma-separated numbers of concurrent askers.")] = "1,4,8,16",
    requests: Annotated[int, typer.Option(min=1, help="Distinct prompts per concurrency level and round.")] = 16,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per level, alternating which side goes first.")] = 2,
    api_url: Annotated[Optional[str], typer.Option(help="The running kb API; default from settings.")] = None,  # noqa: UP045
    api_key: Annotated[
        str, typer.Option(envvar="KB_API_KEY", help="An admin key of the running API (or env KB_API_KEY).")
    ] = "",
    kb: KbOpt = "default",
    targets: Annotated[
        str, typer.Option(help="Comma-separated sides to drive: kb (/ask), openai (/v1/chat/completions), vllm.")
    ] = "kb,vllm",
    as_json: JsonOpt = False,
    output: OutputOpt = None,
) -> None:
    """Drive the running API and vLLM alone with the same prompts; QPS, TTFT and latency p50/p95 for each."""
    from evaluation.bench_e2e import E2EError
    from evaluation.bench_e2e import bench_e2e as run
    from evaluation.datasets import DatasetError, QuestionFile

    try:
        levels = sorted({int(c) for c in concurrency.split(",") if c.strip()})
    except ValueError:
        fail(f"--concurrency must be comma-separated integers, not {concurrency!r}", 2)
    if not levels or min(levels) < 1:
        fail("--concurrency needs numbers >= 1", 2)
    try:
        source = QuestionFile.at(questions)
    except DatasetError as exc:
        fail(f"{exc}: pass --questions", 2)
    if not api_key:
        fail("--api-key (or KB_API_KEY) is required: the API answers only signed-in callers", 2)
    try:
        report = run(
            load_settings(), source, levels=levels, requests=requests, rounds=rounds, api_url=api_url, kb=kb,
            api_key=api_key, targets=[t.strip() for t in targets.split(",") if t.strip()], progress=_progress,
        )  # fmt: skip
    except E2EError as exc:
        fail(str(exc))
    _print(report, report.markdown(), as_json=as_json, output=output)
