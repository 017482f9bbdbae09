"""`kb bench e2e`: kb's answer throughput and latency under concurrency, against vLLM alone.

The same run drives the running API (`POST /ask`, streamed) with concurrent askers, then sends the very
prompts kb built (same messages, decoding pattern, max_tokens, temperature) straight to the model
server, so that the difference is what kb's orchestration costs: retrieval, prompt assembly, citation
checks and the extra HTTP hop. With the `openai` target it also asks the same questions through kb's
OpenAI-compatible endpoint (`/v1/chat/completions`, streamed), to measure what that protocol costs over
`/ask`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, ValidationError

from app.answers.service import Question
from app.container import Container
from app.settings import Settings
from evaluation.access import EVERYTHING
from evaluation.datasets import QuestionFile
from evaluation.e2e_clients import Asker, Prompt, Sample, kb_asker, openai_asker, run_level, vllm_asker
from evaluation.metrics import percentile

Progress = Callable[[str], None]

TARGETS = ("kb", "openai", "vllm")


class E2EError(RuntimeError):
    pass


# -- the API's readiness, as far as this benchmark reads it ------------------------------------------


class _ReadyLLM(BaseModel):
    max_tokens: int | None = None


class _Ready(BaseModel):
    components: dict[str, str] = {}
    llm: _ReadyLLM = _ReadyLLM()


# -- measurements -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LevelResult:
    target: str  # kb | openai | vllm
    concurrency: int
    requests: int
    errors: int
    qps: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    completion_tokens: int

    @classmethod
    def of(cls, target: str, concurrency: int, samples: Sequence[Sample], wall: float) -> LevelResult:
        good = [s for s in samples if s.ok]
        ttft, e2e = [s.ttft_ms for s in good], [s.e2e_ms for s in good]
        return cls(
            target=target, concurrency=concurrency, requests=len(samples), errors=len(samples) - len(good),
            qps=len(good) / wall if wall else 0.0,
            ttft_p50_ms=percentile(ttft, 50), ttft_p95_ms=percentile(ttft, 95),
            e2e_p50_ms=percentile(e2e, 50), e2e_p95_ms=percentile(e2e, 95),
            completion_tokens=sum(s.completion_tokens for s in good),
        )  # fmt: skip


@dataclass(frozen=True)
class Overhead:
    concurrency: int
    qps_ratio: float  # kb QPS / vLLM QPS
    ttft_overhead_p50_ms: float
    e2e_overhead_p50_ms: float


@dataclass(frozen=True)
class OpenAIOverhead:
    """/v1/chat/completions against /ask, the same questions in the same run."""

    concurrency: int
    ttft_p50_ask_ms: float
    ttft_p50_openai_ms: float
    e2e_p50_ask_ms: float
    e2e_p50_openai_ms: float

    @property
    def ttft_overhead_pct(self) -> float:
        return _pct(self.ttft_p50_openai_ms, self.ttft_p50_ask_ms)

    @property
    def e2e_overhead_pct(self) -> float:
        return _pct(self.e2e_p50_openai_ms, self.e2e_p50_ask_ms)


def _pct(value: float, base: float) -> float:
    return (value / base - 1) * 100 if base else math.nan


@dataclass
class E2EReport:
    api_url: str
    llm_url: str
    model: str
    max_tokens: int
    requests: int
    rounds: int
    questions: str
    targets: list[str] = field(default_factory=lambda: ["kb", "vllm"])
    results: list[LevelResult] = field(default_factory=list)
    summary: list[Overhead] = field(default_factory=list)
    openai: list[OpenAIOverhead] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [
            "| concurrency | target | requests | errors | QPS | TTFT p50 / p95 (ms) "
            "| end-to-end p50 / p95 (ms) | tokens |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            lines.append(
                f"| {r.concurrency} | {r.target} | {r.requests} | {r.errors} | {r.qps:.2f} "
                f"| {r.ttft_p50_ms:.0f} / {r.ttft_p95_ms:.0f} | {r.e2e_p50_ms:.0f} / {r.e2e_p95_ms:.0f} "
                f"| {r.completion_tokens} |"
            )
        if self.summary:
            lines += ["", "| concurrency | kb QPS / vLLM QPS | TTFT overhead p50 (ms) | end-to-end overhead p50 (ms) |"]
            lines.append("|---|---|---|---|")
            for s in self.summary:
                lines.append(
                    f"| {s.concurrency} | {s.qps_ratio:.2f} | {s.ttft_overhead_p50_ms:.0f} "
                    f"| {s.e2e_overhead_p50_ms:.0f} |"
                )
        if self.openai:
            lines += [
                "",
                "| concurrency | TTFT p50 /ask → /v1 (ms) | /v1 TTFT overhead | end-to-end p50 /ask → /v1 (ms) "
                "| /v1 end-to-end overhead |",
                "|---|---|---|---|---|",
            ]
            for o in self.openai:
                lines.append(
                    f"| {o.concurrency} | {o.ttft_p50_ask_ms:.0f} → {o.ttft_p50_openai_ms:.0f} "
                    f"| {o.ttft_overhead_pct:+.1f}% | {o.e2e_p50_ask_ms:.0f} → {o.e2e_p50_openai_ms:.0f} "
                    f"| {o.e2e_overhead_pct:+.1f}% |"
                )
        return "\n".join(lines)


def _result(results: Sequence[LevelResult], concurrency: int, target: str) -> LevelResult | None:
    return next((r for r in results if r.concurrency == concurrency and r.target == target), None)


def summarize(results: Sequence[LevelResult]) -> list[Overhead]:
    """kb (/ask) against vLLM alone, at each level where both ran."""
    rows = []
    for c in sorted({r.concurrency for r in results}):
        kb, vllm = _result(results, c, "kb"), _result(results, c, "vllm")
        if kb is None or vllm is None:
            continue
        rows.append(
            Overhead(
                concurrency=c,
                qps_ratio=kb.qps / vllm.qps if vllm.qps else math.nan,
                ttft_overhead_p50_ms=kb.ttft_p50_ms - vllm.ttft_p50_ms,
                e2e_overhead_p50_ms=kb.e2e_p50_ms - vllm.e2e_p50_ms,
            )
        )
    return rows


def summarize_openai(results: Sequence[LevelResult]) -> list[OpenAIOverhead]:
    """/v1/chat/completions against /ask, at each level where both ran."""
    rows = []
    for c in sorted({r.concurrency for r in results}):
        ask, v1 = _result(results, c, "kb"), _result(results, c, "openai")
        if ask is None or v1 is None:
            continue
        row = OpenAIOverhead(
            concurrency=c, ttft_p50_ask_ms=ask.ttft_p50_ms, ttft_p50_openai_ms=v1.ttft_p50_ms,
            e2e_p50_ask_ms=ask.e2e_p50_ms, e2e_p50_openai_ms=v1.e2e_p50_ms,
        )  # fmt: skip
        rows.append(row)
    return rows


# -- the run ------------------------------------------------------------------------------------------


def _ready(api: str, api_key: str) -> _Ready:
    try:
        # An admin's key: /readyz names the components (and the model's settings) only to admins.
        response = httpx.get(f"{api}/readyz", timeout=10, headers={"Authorization": f"Bearer {api_key}"})
        return _Ready.model_validate_json(response.content)
    except httpx.HTTPError as exc:
        raise E2EError(f"the kb API does not answer at {api} ({exc}): start it with `kb up`") from exc
    except ValidationError as exc:
        raise E2EError(f"{api}/readyz did not answer as a kb API does: {exc}") from exc


def _prompts(settings: Settings, questions: QuestionFile, kb: str, requests: int) -> list[Prompt]:
    """The prompts kb builds for these questions, made here with the same settings and knowledge base."""
    service = Container(settings).answers
    prompts: list[Prompt] = []
    for text in questions.spread(requests * 3):
        messages, pattern = asyncio.run(service.prompt(Question(text=text, access=EVERYTHING.access, kb=kb)))
        if messages:  # a question kb refuses never reaches the model: nothing to compare
            prompts.append(Prompt(question=text, messages=messages, pattern=pattern))
        if len(prompts) == requests:
            break
    if not prompts:
        raise E2EError(f"kb refuses every question in {questions.label}: is the knowledge base {kb!r} ingested?")
    return prompts


def bench_e2e(
    settings: Settings, questions: QuestionFile, *, levels: Sequence[int], requests: int, rounds: int,
    api_key: str, api_url: str | None = None, kb: str = "default", targets: Sequence[str] = ("kb", "vllm"),
    progress: Progress = lambda _: None,
) -> E2EReport:  # fmt: skip
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise E2EError(f"unknown targets {unknown or '(none)'}: choose from {', '.join(TARGETS)}")
    chosen = [t for t in TARGETS if t in targets]
    api = (api_url or settings.api_url).rstrip("/")
    ready = _ready(api, api_key)
    if ready.components.get("llm") != "up":
        raise E2EError(f"the API at {api} reports the model server down: {ready.model_dump()}")
    prompts = _prompts(settings, questions, kb, requests)
    llm = settings.llm
    # The answer length the API uses, so that vLLM alone is asked for the same work.
    max_tokens = ready.llm.max_tokens or llm.max_tokens
    every: dict[str, Asker] = {
        "kb": kb_asker(api, kb, api_key),
        "openai": openai_asker(api, kb, api_key),
        "vllm": vllm_asker(
            settings.llm_base_url.rstrip("/"), llm.served_model_name, llm.api_key.get_secret_value(),
            max_tokens, llm.temperature,
        ),
    }  # fmt: skip
    askers = {t: every[t] for t in chosen}
    timeout_s = llm.timeout_s * 3
    # One unmeasured request each way, so that neither side pays a cold start inside the numbers.
    for ask in askers.values():
        asyncio.run(run_level(1, prompts[:1], ask, timeout_s))
    report = E2EReport(
        api_url=api, llm_url=settings.llm_base_url, model=llm.served_model_name, max_tokens=max_tokens,
        requests=len(prompts), rounds=rounds, questions=questions.label, targets=chosen,
    )  # fmt: skip
    for c in sorted(levels):
        pooled: dict[str, tuple[list[Sample], float]] = {t: ([], 0.0) for t in chosen}
        for r in range(rounds):
            # Alternate the order of the sides, so that a machine getting busier or quieter during the run
            # does not favour one of them.
            for target in chosen if r % 2 == 0 else chosen[::-1]:
                samples, wall = asyncio.run(run_level(c, prompts, askers[target], timeout_s))
                pooled[target] = (pooled[target][0] + samples, pooled[target][1] + wall)
        for target, (samples, wall) in pooled.items():
            result = LevelResult.of(target, c, samples, wall)
            report.results.append(result)
            progress(f"{target:6} c={c:<3} qps={result.qps:.2f} errors={result.errors}")
    report.summary = summarize(report.results)
    report.openai = summarize_openai(report.results)
    return report
