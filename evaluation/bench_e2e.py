"""`kb bench e2e`: kb's answer throughput and latency under concurrency, against vLLM alone.

The same run drives the running API (`POST /ask`, streamed) with concurrent askers, then sends the very
prompts kb built (same messages, decoding pattern, max_tokens, temperature) straight to the model
server, so that the difference is what kb's orchestration costs: retrieval, prompt assembly, citation
checks and the extra HTTP hop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx
from pydantic import BaseModel, ValidationError

from app.answering import Question
from app.container import Container
from app.settings import Settings
from evaluation.access import EVERYTHING
from evaluation.datasets import QuestionFile
from evaluation.e2e_clients import Prompt, Sample, kb_asker, run_level, vllm_asker
from evaluation.metrics import percentile

Progress = Callable[[str], None]


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
    target: str  # kb | vllm
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


@dataclass
class E2EReport:
    api_url: str
    llm_url: str
    model: str
    max_tokens: int
    requests: int
    rounds: int
    questions: str
    results: list[LevelResult] = field(default_factory=list)
    summary: list[Overhead] = field(default_factory=list)

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
        lines += ["", "| concurrency | kb QPS / vLLM QPS | TTFT overhead p50 (ms) | end-to-end overhead p50 (ms) |"]
        lines.append("|---|---|---|---|")
        for s in self.summary:
            lines.append(
                f"| {s.concurrency} | {s.qps_ratio:.2f} | {s.ttft_overhead_p50_ms:.0f} | {s.e2e_overhead_p50_ms:.0f} |"
            )
        return "\n".join(lines)


def summarize(results: Sequence[LevelResult]) -> list[Overhead]:
    rows = []
    for c in sorted({r.concurrency for r in results}):
        kb = next(r for r in results if r.concurrency == c and r.target == "kb")
        vllm = next(r for r in results if r.concurrency == c and r.target == "vllm")
        rows.append(
            Overhead(
                concurrency=c,
                qps_ratio=kb.qps / vllm.qps if vllm.qps else math.nan,
                ttft_overhead_p50_ms=kb.ttft_p50_ms - vllm.ttft_p50_ms,
                e2e_overhead_p50_ms=kb.e2e_p50_ms - vllm.e2e_p50_ms,
            )
        )
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
    api_key: str, api_url: str | None = None, kb: str = "default", progress: Progress = lambda _: None,
) -> E2EReport:  # fmt: skip
    api = (api_url or settings.api_url).rstrip("/")
    ready = _ready(api, api_key)
    if ready.components.get("llm") != "up":
        raise E2EError(f"the API at {api} reports the model server down: {ready.model_dump()}")
    prompts = _prompts(settings, questions, kb, requests)
    llm = settings.llm
    # The answer length the API uses, so that vLLM alone is asked for the same work.
    max_tokens = ready.llm.max_tokens or llm.max_tokens
    askers = {
        "kb": kb_asker(api, kb, api_key),
        "vllm": vllm_asker(
            settings.llm_base_url.rstrip("/"), llm.served_model_name, llm.api_key.get_secret_value(),
            max_tokens, llm.temperature,
        ),
    }  # fmt: skip
    timeout_s = llm.timeout_s * 3
    # One unmeasured request each way, so that neither side pays a cold start inside the numbers.
    for ask in askers.values():
        asyncio.run(run_level(1, prompts[:1], ask, timeout_s))
    report = E2EReport(
        api_url=api, llm_url=settings.llm_base_url, model=llm.served_model_name, max_tokens=max_tokens,
        requests=len(prompts), rounds=rounds, questions=questions.label,
    )  # fmt: skip
    for c in sorted(levels):
        pooled: dict[str, tuple[list[Sample], float]] = {"kb": ([], 0.0), "vllm": ([], 0.0)}
        for r in range(rounds):
            # Alternate which side goes first, so that a machine getting busier or quieter during the run
            # does not favour one side.
            for target in ("kb", "vllm") if r % 2 == 0 else ("vllm", "kb"):
                samples, wall = asyncio.run(run_level(c, prompts, askers[target], timeout_s))
                pooled[target] = (pooled[target][0] + samples, pooled[target][1] + wall)
        for target, (samples, wall) in pooled.items():
            result = LevelResult.of(target, c, samples, wall)
            report.results.append(result)
            progress(f"{target:5} c={c:<3} qps={result.qps:.2f} errors={result.errors}")
    report.summary = summarize(report.results)
    return report
