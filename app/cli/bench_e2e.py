"""`kb bench e2e`: kb's answer throughput and latency under concurrency, against vLLM alone.

The same run drives the running API (`POST /ask`, streamed) with concurrent askers, then sends the very
prompts kb built (same messages, decoding pattern, max_tokens, temperature) straight to the model
server, so that the difference is what kb's orchestration costs: retrieval, prompt assembly, citation
checks and the extra HTTP hop.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import httpx
import typer

from app.cli._common import JsonOpt, KbOpt, bench_cli, emit, fail, load_settings
from core.types import ChatMessage

DEFAULT_EVAL = Path(__file__).resolve().parents[2].parent / "shared" / "eval"


@dataclass(frozen=True)
class Prompt:
    question: str
    messages: list[ChatMessage]
    pattern: str | None


@dataclass
class Sample:
    ok: bool
    ttft_ms: float = 0.0
    e2e_ms: float = 0.0
    completion_tokens: int = 0


@dataclass
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


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _sse_lines(line: str, state: dict[str, str]) -> tuple[str, dict[str, object]] | None:
    if line.startswith("event: "):
        state["event"] = line.removeprefix("event: ")
    elif line.startswith("data: "):
        return state.get("event", ""), json.loads(line.removeprefix("data: "))
    return None


async def _ask_kb(client: httpx.AsyncClient, api_url: str, kb: str, prompt: Prompt) -> Sample:
    started = time.perf_counter()
    sample = Sample(ok=False)
    state: dict[str, str] = {}
    payload = {"question": prompt.question, "kb": kb, "stream": True}
    async with client.stream("POST", f"{api_url}/ask", json=payload) as response:
        if response.status_code != 200:
            return sample
        async for line in response.aiter_lines():
            event = _sse_lines(line, state)
            if event is None:
                continue
            name, data = event
            if name == "token" and not sample.ttft_ms:
                sample.ttft_ms = (time.perf_counter() - started) * 1000
            elif name == "done":
                usage = data.get("usage")
                sample.completion_tokens = int(usage.get("completion_tokens", 0)) if isinstance(usage, dict) else 0
                sample.ok = not data.get("degraded") and not data.get("refused")
            elif name == "error":
                return sample
    sample.e2e_ms = (time.perf_counter() - started) * 1000
    return sample


def _vllm_asker(
    llm_url: str, model: str, api_key: str, max_tokens: int, temperature: float
) -> Callable[[httpx.AsyncClient, Prompt], Awaitable[Sample]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def ask(client: httpx.AsyncClient, prompt: Prompt) -> Sample:
        body: dict[str, object] = {
            "model": model, "messages": [m.model_dump() for m in prompt.messages], "max_tokens": max_tokens,
            "temperature": temperature, "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
        if prompt.pattern:
            body["structured_outputs"] = {"regex": prompt.pattern}
        started = time.perf_counter()
        sample = Sample(ok=False)
        async with client.stream("POST", f"{llm_url}/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                return sample
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and not sample.ttft_ms:
                    sample.ttft_ms = (time.perf_counter() - started) * 1000
                if chunk.get("usage"):
                    sample.completion_tokens = int(chunk["usage"]["completion_tokens"])
        sample.e2e_ms = (time.perf_counter() - started) * 1000
        sample.ok = sample.ttft_ms > 0
        return sample

    return ask


async def _run_level(
    concurrency: int,
    prompts: Sequence[Prompt],
    ask: Callable[[httpx.AsyncClient, Prompt], Awaitable[Sample]],
    timeout_s: float,
) -> tuple[list[Sample], float]:
    """Every prompt once, by `concurrency` askers; the samples and the wall time in seconds."""
    queue: asyncio.Queue[Prompt] = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    samples: list[Sample] = []
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                prompt = queue.get_nowait()
                try:
                    samples.append(await ask(client, prompt))
                except httpx.HTTPError:
                    samples.append(Sample(ok=False))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - started


def _level_result(target: str, concurrency: int, samples: Sequence[Sample], wall: float) -> LevelResult:
    good = [s for s in samples if s.ok]
    ttft, e2e = [s.ttft_ms for s in good], [s.e2e_ms for s in good]
    return LevelResult(
        target=target, concurrency=concurrency, requests=len(samples), errors=len(samples) - len(good),
        qps=len(good) / wall if wall else 0.0,
        ttft_p50_ms=_percentile(ttft, 50), ttft_p95_ms=_percentile(ttft, 95),
        e2e_p50_ms=_percentile(e2e, 50), e2e_p95_ms=_percentile(e2e, 95),
        completion_tokens=sum(s.completion_tokens for s in good),
    )  # fmt: skip


def _load_questions(path: Path, limit: int) -> list[str]:
    """Answerable questions taken round-robin over the articles, not the first article's dozens."""
    by_doc: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("answerable", True):
                by_doc.setdefault(str(row.get("doc", "")), []).append(str(row["question"]))
    longest = max((len(g) for g in by_doc.values()), default=0)
    spread = [group[i] for i in range(longest) for group in by_doc.values() if i < len(group)]
    return spread[:limit]


@bench_cli.command("e2e")
def bench_e2e(  # noqa: PLR0917  (Typer options)
    concurrency: Annotated[str, typer.Option(help="Comma-separated numbers of concurrent askers.")] = "1,4,8,16",
    requests: Annotated[int, typer.Option(min=1, help="Distinct prompts per concurrency level and round.")] = 16,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per level, alternating which side goes first.")] = 2,
    questions: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="QA file (jsonl with 'question'); default ../shared/eval/xquad_en/qa.jsonl."),
    ] = None,
    api_url: Annotated[Optional[str], typer.Option(help="The running kb API; default from settings.")] = None,  # noqa: UP045
    kb: KbOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Drive the running API and vLLM alone with the same prompts; QPS, TTFT and latency p50/p95 for both."""
    from app.answering import Question
    from app.container import Container

    try:
        levels = sorted({int(c) for c in concurrency.split(",") if c.strip()})
    except ValueError:
        fail(f"--concurrency must be comma-separated integers, not {concurrency!r}", 2)
    if not levels or min(levels) < 1:
        fail("--concurrency needs numbers >= 1", 2)
    qa_path = questions or DEFAULT_EVAL / "xquad_en" / "qa.jsonl"
    if not qa_path.is_file():
        fail(f"no questions file at {qa_path}: pass --questions")
    settings = load_settings()
    api = (api_url or settings.api_url).rstrip("/")
    try:
        ready = httpx.get(f"{api}/readyz", timeout=10).json()
    except httpx.HTTPError as exc:
        fail(f"the kb API does not answer at {api} ({exc}): start it with `kb up`")
    if ready.get("components", {}).get("llm") != "up":
        fail(f"the API at {api} reports the model server down: {ready}")

    # The prompts kb builds for these questions, made here with the same settings and knowledge base.
    container = Container(settings)
    service = container.answers
    prompts: list[Prompt] = []
    for text in _load_questions(qa_path, requests * 3):
        messages, pattern = asyncio.run(service.prompt(Question(text=text, kb=kb)))
        if messages:  # a question kb refuses never reaches the model: nothing to compare
            prompts.append(Prompt(question=text, messages=messages, pattern=pattern))
        if len(prompts) == requests:
            break
    if not prompts:
        fail(f"kb refuses every question in {qa_path}: is the knowledge base {kb!r} ingested?")
    llm = settings.llm
    # The answer length the API uses, so that vLLM alone is asked for the same work.
    max_tokens = int(ready.get("llm", {}).get("max_tokens", llm.max_tokens))
    to_vllm = _vllm_asker(
        settings.llm_base_url.rstrip("/"), llm.served_model_name, llm.api_key.get_secret_value(),
        max_tokens, llm.temperature,
    )  # fmt: skip

    async def to_kb(client: httpx.AsyncClient, prompt: Prompt) -> Sample:
        return await _ask_kb(client, api, kb, prompt)

    # One unmeasured request each way, so that neither side pays a cold start inside the numbers.
    timeout_s = llm.timeout_s * 3
    asyncio.run(_run_level(1, prompts[:1], to_kb, timeout_s))
    asyncio.run(_run_level(1, prompts[:1], to_vllm, timeout_s))
    askers = {"kb": to_kb, "vllm": to_vllm}
    results: list[LevelResult] = []
    for c in levels:
        pooled: dict[str, tuple[list[Sample], float]] = {"kb": ([], 0.0), "vllm": ([], 0.0)}
        for r in range(rounds):
            # Alternate which side goes first, so that a machine getting busier or quieter during the run
            # does not favour one side.
            for target in ("kb", "vllm") if r % 2 == 0 else ("vllm", "kb"):
                samples, wall = asyncio.run(_run_level(c, prompts, askers[target], timeout_s))
                pooled[target] = (pooled[target][0] + samples, pooled[target][1] + wall)
        for target, (samples, wall) in pooled.items():
            result = _level_result(target, c, samples, wall)
            results.append(result)
            typer.echo(f"{target:5} c={c:<3} qps={result.qps:.2f} errors={result.errors}", err=True)
    summary = _summary(results)
    data = {
        "api_url": api, "llm_url": settings.llm_base_url, "model": llm.served_model_name,
        "max_tokens": max_tokens, "requests": len(prompts), "rounds": rounds, "questions": str(qa_path),
        "results": [asdict(r) for r in results], "summary": summary,
    }  # fmt: skip
    emit(data, as_json, _markdown(results, summary))


def _summary(results: Sequence[LevelResult]) -> list[dict[str, float]]:
    rows = []
    for c in sorted({r.concurrency for r in results}):
        kb = next(r for r in results if r.concurrency == c and r.target == "kb")
        vllm = next(r for r in results if r.concurrency == c and r.target == "vllm")
        rows.append(
            {
                "concurrency": c,
                "qps_ratio": kb.qps / vllm.qps if vllm.qps else float("nan"),
                "ttft_overhead_p50_ms": kb.ttft_p50_ms - vllm.ttft_p50_ms,
                "e2e_overhead_p50_ms": kb.e2e_p50_ms - vllm.e2e_p50_ms,
            }
        )
    return rows


def _markdown(results: Sequence[LevelResult], summary: Sequence[dict[str, float]]) -> str:
    lines = [
        "| concurrency | target | requests | errors | QPS | TTFT p50 / p95 (ms) | end-to-end p50 / p95 (ms) | tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.concurrency} | {r.target} | {r.requests} | {r.errors} | {r.qps:.2f} "
            f"| {r.ttft_p50_ms:.0f} / {r.ttft_p95_ms:.0f} | {r.e2e_p50_ms:.0f} / {r.e2e_p95_ms:.0f} "
            f"| {r.completion_tokens} |"
        )
    lines += ["", "| concurrency | kb QPS / vLLM QPS | TTFT overhead p50 (ms) | end-to-end overhead p50 (ms) |"]
    lines.append("|---|---|---|---|")
    for s in summary:
        lines.append(
            f"| {s['concurrency']:.0f} | {s['qps_ratio']:.2f} | {s['ttft_overhead_p50_ms']:.0f} "
            f"| {s['e2e_overhead_p50_ms']:.0f} |"
        )
    return "\n".join(lines)
