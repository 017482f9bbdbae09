"""`kb eval qa`: ingest a QA set's docs/ through the real ingestion pipeline into a throw-away kb, then
measure document hits and, when the model server answers, EM/F1, refusal accuracy and citation precision."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from app.answers.service import AnswerService, Question
from app.settings import Settings
from core.types import Answer, SearchMode
from evaluation.access import EVERYTHING
from evaluation.datasets import QAItem, QASet
from evaluation.metrics import contains_answer, exact_match, f1_score, mean, percentile
from evaluation.scratch import scratch_container
from retrieval.pipeline import QueryPipeline

QA_KB = "eval"
COMPARE_MODES: tuple[SearchMode, ...] = ("dense", "bm25", "hybrid")

Progress = Callable[[str], None]


class QAEvalError(RuntimeError):
    pass


def parse_compare(text: str) -> list[SearchMode]:
    wanted = [m.strip() for m in text.split(",") if m.strip()]
    modes = [m for m in COMPARE_MODES if m in wanted]
    if len(modes) != len(set(wanted)):
        raise ValueError(f"--compare takes {', '.join(COMPARE_MODES)}; got {text!r}")
    return sorted(modes, key=wanted.index)


@dataclass(frozen=True)
class ModeHits:
    """Document hits for one requested search mode, and the modes that answered (language-aware fusion)."""

    hit_at_1: float
    hit_at_5: float
    answered_as: dict[str, int]


@dataclass(frozen=True)
class ContextCoverage:
    """The context the model would be given (top_k hits of the configured mode, the configured token budget)
    with `expand` small-to-big neighbours per side: the share of answerable questions whose gold answer is
    in it, and what it costs."""

    expand: int
    answer_in_context: float
    mean_tokens: float
    mean_sources: float


@dataclass
class QAReport:
    dataset: str
    documents: int
    questions: int
    hit_at_1: float = 0.0
    hit_at_5: float = 0.0
    search_p50_ms: float = 0.0
    search_p95_ms: float = 0.0
    modes: dict[str, int] = field(default_factory=dict)
    by_mode: dict[str, ModeHits] = field(default_factory=dict)
    llm: str = "not run"
    answered: int = 0
    exact_match: float | None = None
    f1: float | None = None
    refusal_accuracy: float | None = None
    false_refusals: float | None = None
    citation_precision: float | None = None
    # Share of answerable questions whose answer text holds the gold answer (evaluation.metrics.
    # contains_answer): extractive over `extractive_questions` questions (no model needed); generative,
    # extractive and auto (generative when a sentence is supported, else extractive) over the questions the
    # model answered.
    extractive_questions: int = 0
    contains_extractive_all: float | None = None
    contains_generative: float | None = None
    contains_extractive: float | None = None
    contains_auto: float | None = None
    auto_kept_generative: float | None = None  # share of those answers where auto keeps the model's text
    # Of the model's sentences that cite a source: how many are supported, and the share whose cited
    # passage holds the gold answer, for supported and for unsupported sentences.
    supported_sentences: int = 0
    unsupported_sentences: int = 0
    precision_supported: float | None = None
    precision_unsupported: float | None = None
    ingest_s: float = 0.0
    context: list[ContextCoverage] = field(default_factory=list)
    context_questions: int = 0
    # Per question the model answered: the answers in each mode and what was scored (`--details`).
    details: list[dict[str, object]] = field(default_factory=list, repr=False)

    def table(self) -> str:
        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.4f}"

        rows = [
            f"{self.dataset}: {self.documents} documents, {self.questions} questions "
            f"(answered as {', '.join(f'{k} {v}' for k, v in sorted(self.modes.items()))})",
            f"document hit@1       {self.hit_at_1:.4f}",
            f"document hit@5       {self.hit_at_5:.4f}",
            f"search p50 / p95 ms  {self.search_p50_ms:.1f} / {self.search_p95_ms:.1f}",
            f"LLM                  {self.llm}",
        ]
        for mode, hits in self.by_mode.items():
            rows.append(
                f"  requested {mode:<7} hit@1 {hits.hit_at_1:.4f}  hit@5 {hits.hit_at_5:.4f}  "
                f"(answered as {hits.answered_as})"
            )
        for c in self.context:
            rows.append(
                f"answer in context, expand {c.expand}: {c.answer_in_context:.4f} over {self.context_questions} "
                f"questions ({c.mean_tokens:.0f} tokens, {c.mean_sources:.2f} sources on average)"
            )
        if self.extractive_questions:
            rows.append(
                f"contains gold, extractive, {self.extractive_questions} questions  {fmt(self.contains_extractive_all)}"
            )
        if self.answered:
            rows += [
                f"contains gold        generative {fmt(self.contains_generative)}  extractive "
                f"{fmt(self.contains_extractive)}  auto {fmt(self.contains_auto)} (auto kept the model's text "
                f"for {fmt(self.auto_kept_generative)})",
                f"cited passage holds gold: supported sentences {fmt(self.precision_supported)} "
                f"({self.supported_sentences}), unsupported {fmt(self.precision_unsupported)} "
                f"({self.unsupported_sentences})",
                f"answers scored       {self.answered}",
                f"exact match          {fmt(self.exact_match)}",
                f"F1                   {fmt(self.f1)}",
                f"refusal accuracy     {fmt(self.refusal_accuracy)} (questions marked unanswerable)",
                f"false refusals       {fmt(self.false_refusals)} (answerable questions refused)",
                f"citation precision   {fmt(self.citation_precision)} (cited sources from the gold document)",
            ]
        return "\n".join(rows)


def _document_hits(
    items: Sequence[QAItem], query: QueryPipeline, mode: SearchMode | None
) -> tuple[ModeHits, list[float]]:
    """Share of questions whose gold document holds the first / one of the first five chunks, and the
    search latencies in ms."""
    hit1 = hit5 = 0
    ms: list[float] = []
    modes: dict[str, int] = {}
    for item in items:
        t = time.perf_counter()
        found = query.candidates(item.question, flt=EVERYTHING, kb=QA_KB, limit=5, mode=mode)
        ms.append((time.perf_counter() - t) * 1000)
        modes[found.mode] = modes.get(found.mode, 0) + 1
        docs_found = [Path(h.chunk.doc_id).name for h in found.hits[:5]]
        hit1 += bool(docs_found) and docs_found[0] == item.doc
        hit5 += item.doc in docs_found
    return ModeHits(hit1 / len(items), hit5 / len(items), modes), ms


def context_coverage(
    items: Sequence[QAItem], query: QueryPipeline, *, top_k: int, expand: Sequence[int],
    count_tokens: Callable[[str], int],
) -> list[ContextCoverage]:  # fmt: skip
    """Answer-in-context rate per small-to-big setting, over the same hits (one search per question)."""
    found: dict[int, list[float]] = {e: [] for e in expand}
    tokens: dict[int, list[float]] = {e: [] for e in expand}
    sources: dict[int, list[float]] = {e: [] for e in expand}
    for item in items:
        hits = query.candidates(item.question, flt=EVERYTHING, kb=QA_KB, limit=top_k).hits[:top_k]
        for e in expand:
            context = query.context(QA_KB, hits, EVERYTHING, expand=e)
            text = "\n".join(s.text for s in context)
            found[e].append(float(contains_answer(text, item.answers)))
            tokens[e].append(float(count_tokens(text)))
            sources[e].append(float(len(context)))
    return [ContextCoverage(e, mean(found[e]) or 0.0, mean(tokens[e]) or 0.0, mean(sources[e]) or 0.0) for e in expand]


def llm_problem(settings: Settings, timeout_s: float = 5.0) -> str | None:
    """None when the OpenAI-compatible server lists its models, else why the answers are skipped."""
    base_url = settings.llm_base_url
    headers = {"Authorization": f"Bearer {settings.llm.api_key.get_secret_value()}"}
    try:
        r = httpx.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return f"LLM not reachable at {base_url} ({type(exc).__name__}): skipped"
    return None if r.status_code == 200 else f"LLM at {base_url} answered HTTP {r.status_code}: skipped"


def evaluate_qa(
    data: QASet,
    settings: Settings,
    *,
    llm_limit: int,
    extractive_limit: int = 0,
    compare: Sequence[SearchMode] = (),
    context_expand: Sequence[int] = (),
    progress: Progress = lambda _: None,
) -> QAReport:
    """Raises QAEvalError when documents fail to ingest: hits over a partial corpus would mislead."""
    problem = llm_problem(settings) if llm_limit else "not asked (--llm-limit 0)"
    with scratch_container(settings) as (container, _):
        t = time.perf_counter()
        progress(f"ingesting {data.docs}")
        results = container.ingest.ingest_paths([data.docs], kb=QA_KB)
        failed = [r for r in results if r.status == "failed"]
        if failed:
            raise QAEvalError(f"{len(failed)} documents failed to ingest, e.g. {failed[0].doc_id}: {failed[0].error}")
        report = QAReport(
            dataset=data.name, documents=len(results), questions=len(data.items), ingest_s=time.perf_counter() - t
        )
        query = container.query
        for mode in compare:
            progress(f"searching {len(data.items)} questions, mode {mode}")
            report.by_mode[mode], _ = _document_hits(data.items, query, mode)
        progress(f"searching {len(data.items)} questions")
        hits, ms = _document_hits(data.items, query, None)
        report.hit_at_1, report.hit_at_5, report.modes = hits.hit_at_1, hits.hit_at_5, hits.answered_as
        report.search_p50_ms, report.search_p95_ms = percentile(ms, 50), percentile(ms, 95)
        if context_expand:
            answerable = [i for i in data.items if i.answerable and i.answers]
            progress(f"assembling the context of {len(answerable)} questions, expand {list(context_expand)}")
            report.context_questions = len(answerable)
            report.context = context_coverage(
                answerable, query, top_k=settings.retrieval.top_k, expand=context_expand,
                count_tokens=container.embedder.count_tokens,
            )  # fmt: skip
        answerable = [i for i in data.items if i.answerable and i.answers][: extractive_limit or None]
        progress(f"extractive answers to {len(answerable)} questions")
        asyncio.run(_score_extractive(report, answerable, container.answers))
        if problem is not None:
            report.llm = problem
            return report
        report.llm = "reachable"
        progress(f"asking the model {min(llm_limit, len(data.items))} questions")
        asyncio.run(_score_answers(report, data.items[:llm_limit], container.answers))
    return report


async def _score_extractive(report: QAReport, items: Sequence[QAItem], answers: AnswerService) -> None:
    found = []
    for item in items:
        answer = await answers.ask(
            Question(text=item.question, access=EVERYTHING.access, kb=QA_KB, answer_mode="extractive")
        )
        found.append(float(contains_answer(answer.answer, item.answers)))
    report.extractive_questions = len(found)
    report.contains_extractive_all = mean(found)


def _auto(generative: Answer, extractive: Answer) -> Answer:
    """What `answer_mode: auto` returns: the model's text when one of its sentences is supported (or it
    refused), else the extractive answer."""
    return generative if generative.refused or any(s.grounded for s in generative.sentences) else extractive


async def _score_answers(report: QAReport, items: Sequence[QAItem], answers: AnswerService) -> None:
    em: list[float] = []
    f1: list[float] = []
    refusals_right: list[float] = []
    false_refusals: list[float] = []
    contains: dict[str, list[float]] = {"generative": [], "extractive": [], "auto": []}
    kept: list[float] = []
    holds: dict[bool, list[float]] = {True: [], False: []}
    cited = cited_right = 0
    for item in items:
        answer = await answers.ask(
            Question(text=item.question, access=EVERYTHING.access, kb=QA_KB, answer_mode="generative")
        )
        if answer.degraded:
            report.llm = f"model failed during the run: {answer.message}"
            continue
        report.answered += 1
        if not item.answerable:
            refusals_right.append(float(answer.refused))
            continue
        false_refusals.append(float(answer.refused))
        em.append(exact_match(answer.answer, item.answers))
        f1.append(f1_score(answer.answer, item.answers))
        cited += len(answer.citations)
        cited_right += sum(Path(c.doc_id).name == item.doc for c in answer.citations)
        extractive = await answers.ask(
            Question(text=item.question, access=EVERYTHING.access, kb=QA_KB, answer_mode="extractive")
        )
        auto = _auto(answer, extractive)
        kept.append(float(auto is answer))
        for name, given in (("generative", answer), ("extractive", extractive), ("auto", auto)):
            contains[name].append(float(contains_answer(given.answer, item.answers)))
        passages = {s.index: s.text for s in answer.sources}
        for sentence in answer.sentences:
            if sentence.citations:
                texts = [passages.get(n, "") for n in sentence.citations]
                holds[sentence.grounded].append(float(any(contains_answer(t, item.answers) for t in texts)))
        report.details.append(
            {
                "id": item.qid, "question": item.question, "answers": item.answers, "doc": item.doc,
                "generative": answer.answer, "refused": answer.refused,
                "sentences": [s.model_dump() for s in answer.sentences],
                "extractive": extractive.answer, "auto_kept_generative": auto is answer,
                "sources": [{"index": c.index, "doc_id": c.doc_id, "text": c.text} for c in answer.sources],
            }
        )  # fmt: skip
    report.exact_match, report.f1 = mean(em), mean(f1)
    report.refusal_accuracy, report.false_refusals = mean(refusals_right), mean(false_refusals)
    report.citation_precision = cited_right / cited if cited else None
    report.contains_generative = mean(contains["generative"])
    report.contains_extractive = mean(contains["extractive"])
    report.contains_auto = mean(contains["auto"])
    report.auto_kept_generative = mean(kept)
    report.supported_sentences, report.unsupported_sentences = len(holds[True]), len(holds[False])
    report.precision_supported, report.precision_unsupported = mean(holds[True]), mean(holds[False])
