"""`kb eval qa`: ingest a QA set's docs/ through the real ingestion pipeline, then measure document hits
and, when the model server answers, EM/F1, refusal accuracy and citation precision."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from app.answering import AnswerService, Question
from core.types import SearchMode
from ingest.pipeline import IngestPipeline
from retrieval.evaluate import QAItem, exact_match, f1_score, percentile
from retrieval.pipeline import QueryPipeline


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
    # Requested mode -> hit@1, hit@5 and the modes that answered (language-aware fusion).
    by_mode: dict[str, dict[str, object]] = field(default_factory=dict)
    llm: str = "not run"
    answered: int = 0
    exact_match: float | None = None
    f1: float | None = None
    refusal_accuracy: float | None = None
    false_refusals: float | None = None
    citation_precision: float | None = None
    ingest_s: float = 0.0

    def as_json(self) -> dict[str, object]:
        return asdict(self)

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
        for mode, row in self.by_mode.items():
            rows.append(
                f"  requested {mode:<7} hit@1 {row['hit_at_1']:.4f}  hit@5 {row['hit_at_5']:.4f}  "
                f"(answered as {row['answered_as']})"
            )
        if self.answered:
            rows += [
                f"answers scored       {self.answered}",
                f"exact match          {fmt(self.exact_match)}",
                f"F1                   {fmt(self.f1)}",
                f"refusal accuracy     {fmt(self.refusal_accuracy)} (questions marked unanswerable)",
                f"false refusals       {fmt(self.false_refusals)} (answerable questions refused)",
                f"citation precision   {fmt(self.citation_precision)} (cited sources from the gold document)",
            ]
        return "\n".join(rows)


@dataclass
class _Hits:
    hit1: float
    hit5: float
    modes: dict[str, int]
    ms: list[float]


def _document_hits(items: Sequence[QAItem], query: QueryPipeline, kb: str, mode: SearchMode | None) -> _Hits:
    """Share of questions whose gold document holds the first / one of the first five chunks."""
    hit1 = hit5 = 0
    ms: list[float] = []
    modes: dict[str, int] = {}
    for item in items:
        t = time.perf_counter()
        found = query.candidates(item.question, kb=kb, limit=5, mode=mode)
        ms.append((time.perf_counter() - t) * 1000)
        modes[found.mode] = modes.get(found.mode, 0) + 1
        docs_found = [Path(h.chunk.doc_id).name for h in found.hits[:5]]
        hit1 += bool(docs_found) and docs_found[0] == item.doc
        hit5 += item.doc in docs_found
    return _Hits(hit1 / len(items), hit5 / len(items), modes, ms)


def llm_reachable(base_url: str, api_key: str, timeout_s: float = 5.0) -> str | None:
    """None when the OpenAI-compatible server lists its models, else why not."""
    try:
        r = httpx.get(
            f"{base_url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        return f"LLM not reachable at {base_url} ({type(exc).__name__}): skipped"
    return None if r.status_code == 200 else f"LLM at {base_url} answered HTTP {r.status_code}: skipped"


def evaluate_qa(
    *,
    name: str,
    docs: Path,
    items: Sequence[QAItem],
    ingest: IngestPipeline,
    query: QueryPipeline,
    answers: AnswerService,
    llm_problem: str | None,
    llm_limit: int,
    compare: Sequence[SearchMode] = (),
    progress: Callable[[str], None] = lambda _: None,
) -> QAReport:
    kb = "eval"
    t = time.perf_counter()
    progress(f"ingesting {docs}")
    results = ingest.ingest_paths([docs], kb=kb)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} documents failed to ingest, e.g. {failed[0].doc_id}: {failed[0].error}")
    report = QAReport(dataset=name, documents=len(results), questions=len(items), ingest_s=time.perf_counter() - t)
    for mode in compare:
        progress(f"searching {len(items)} questions, mode {mode}")
        hits = _document_hits(items, query, kb, mode)
        report.by_mode[mode] = {"hit_at_1": hits.hit1, "hit_at_5": hits.hit5, "answered_as": hits.modes}
    progress(f"searching {len(items)} questions")
    hits = _document_hits(items, query, kb, None)
    report.hit_at_1, report.hit_at_5, report.modes = hits.hit1, hits.hit5, hits.modes
    report.search_p50_ms, report.search_p95_ms = percentile(hits.ms, 50), percentile(hits.ms, 95)
    if llm_problem is not None:
        report.llm = llm_problem
        return report
    report.llm = "reachable"
    progress(f"asking the model {min(llm_limit, len(items))} questions")
    asyncio.run(_score_answers(report, items[:llm_limit], answers, kb))
    return report


async def _score_answers(report: QAReport, items: Sequence[QAItem], answers: AnswerService, kb: str) -> None:
    em: list[float] = []
    f1: list[float] = []
    refusals_right: list[float] = []
    false_refusals: list[float] = []
    cited = cited_right = 0
    for item in items:
        answer = await answers.ask(Question(text=item.question, kb=kb))
        if answer.degraded:
            report.llm = f"model failed during the run: {answer.message}"
            continue
        report.answered += 1
        if not item.answerable:
            refusals_right.append(float(answer.refused))
            continue
        false_refusals.append(float(answer.refused))
        text = answer.answer
        em.append(exact_match(text, item.answers))
        f1.append(f1_score(text, item.answers))
        cited += len(answer.citations)
        cited_right += sum(Path(c.doc_id).name == item.doc for c in answer.citations)
    report.exact_match = sum(em) / len(em) if em else None
    report.f1 = sum(f1) / len(f1) if f1 else None
    report.refusal_accuracy = sum(refusals_right) / len(refusals_right) if refusals_right else None
    report.false_refusals = sum(false_refusals) / len(false_refusals) if false_refusals else None
    report.citation_precision = cited_right / cited if cited else None
