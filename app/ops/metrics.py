"""Prometheus metrics: one `Metrics` object per process, built with the Container, served at /metrics.

Every series lives in a registry the object owns (no import-time globals), so two apps in one process
(tests) never share counts. When prometheus-client runs in multiprocess mode (its own
`PROMETHEUS_MULTIPROC_DIR`, set before the process starts, e.g. for several uvicorn/gunicorn workers),
values go to that folder and a scrape merges every process's files.

Ingestion is read from the SQL job tables at scrape time, so it is the same whichever API replica is
scraped and needs nothing from the workers.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.types import Answer, Usage
from ingest.jobs import JobItemRow, JobRow
from ingest.registry import Registry, as_utc, now
from retrieval.pipeline import Retrieval

log = logging.getLogger(__name__)

Component = Literal["milvus", "database", "model_server"]
ErrorKind = Literal["timeout", "error"]
Rating = Literal["up", "down"]

JOB_STATES = ("queued", "running", "done", "failed")
ITEM_STATUSES = ("queued", "running", "indexed", "unchanged", "failed")

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_STAGE_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_HITS = (0, 1, 2, 3, 5, 10, 20, 30, 50, 100)
# Scores of different kinds share buckets (score_kind tells them apart): cosine, rerank and weighted
# fusion lie in 0..1, BM25 above, RRF in hundredths.
_SCORES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0, 10.0, 20.0)


def multiprocess_mode() -> bool:
    """Whether prometheus-client chose multiprocess values: it decides once, when first imported."""
    return values.ValueClass is not values.MutexValue


def failure_kind(exc: BaseException) -> ErrorKind:
    """`timeout` when a timeout caused the failure anywhere in its chain, else `error`."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or "timeout" in type(seen).__name__.lower():
            return "timeout"
        seen = seen.__cause__ or seen.__context__
    return "error"


def failed_component(exc: BaseException) -> Component | None:
    """Which backing service an unhandled exception came from, if any (by the modules of its chain)."""
    seen: BaseException | None = exc
    while seen is not None:
        module = type(seen).__module__
        if module.startswith(("sqlalchemy", "psycopg", "sqlite3")):
            return "database"
        if module.startswith(("pymilvus", "milvus_lite", "grpc", "retrieval.store", "retrieval.milvus_connect")):
            return "milvus"
        seen = seen.__cause__ or seen.__context__
    return None


class Metrics:
    def __init__(self, *, database: Registry | None = None) -> None:
        """`database`: kb's SQL registry, whose job tables the ingestion series are read from."""
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry()
        # In multiprocess mode the series are not registered anywhere: each scrape builds a registry
        # that reads every process's files.
        own = None if self.multiprocess else self.registry
        if self.multiprocess:
            # A process that ends cleanly takes its answers in flight out of the sum; one that is killed
            # needs its process manager to call mark_process_dead (docs/deploy.md).
            atexit.register(lambda: mark_process_dead(os.getpid()))  # type: ignore[no-untyped-call]
        self._ingest = IngestCollector(database, on_error=self.observe_error) if database is not None else None
        if self._ingest is not None and not self.multiprocess:
            self.registry.register(self._ingest)

        self.http_requests = Counter(
            "kb_http_requests", "HTTP requests by route template, method, status and the caller's key role",
            ["method", "route", "status", "role"], registry=own,
        )  # fmt: skip
        self.http_duration = Histogram(
            "kb_http_request_duration_seconds", "Time until the last byte of the response (streams included)",
            ["method", "route"], buckets=_SECONDS, registry=own,
        )  # fmt: skip
        self.stage_duration = Histogram(
            "kb_stage_duration_seconds", "Time per answer stage (condense, embed, search, rerank, ..., total)",
            ["endpoint", "stage"], buckets=_STAGE_SECONDS, registry=own,
        )  # fmt: skip
        self.tokens = Counter(
            "kb_llm_tokens", "Model tokens by direction (in: prompt, out: completion), knowledge base and key",
            ["direction", "kb", "key"], registry=own,
        )  # fmt: skip
        self.answers = Counter(
            "kb_answers", "Answers by outcome: grounded, ungrounded (a sentence cites nothing), refused, degraded",
            ["kb", "outcome"], registry=own,
        )  # fmt: skip
        self.in_flight = Gauge(
            "kb_answers_in_flight", "Answers being produced now (the autoscaling signal)",
            registry=own, multiprocess_mode="livesum",
        )  # fmt: skip
        self.retrieval_hits = Histogram("kb_retrieval_hits", "Hits returned per retrieval", buckets=_HITS, registry=own)
        self.retrieval_top_score = Histogram(
            "kb_retrieval_top_score", "The best hit's score per retrieval, by score kind",
            ["score_kind"], buckets=_SCORES, registry=own,
        )  # fmt: skip
        self.feedback = Counter("kb_feedback", "Answer feedback by rating", ["rating"], registry=own)
        self.errors = Counter(
            "kb_component_errors", "Errors and timeouts of Milvus, the database and the model server",
            ["component", "kind"], registry=own,
        )  # fmt: skip
        self.rate_limited = Counter(
            "kb_rate_limited", "Requests refused by the rate limiter, by key role", ["role"], registry=own
        )

    # -- exposition ------------------------------------------------------------------------------
    # Every name here is a classic one, so the output is the 0.0.4 text format that all Prometheus
    # versions read.
    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def render(self) -> bytes:
        """The text exposition format (reads the job tables: call it off the event loop)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
        if self._ingest is not None:
            scrape.register(self._ingest)
        return generate_latest(scrape)

    # -- hooks -----------------------------------------------------------------------------------
    def observe_request(self, *, method: str, route: str, status: int, role: str, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status), role).inc()
        self.http_duration.labels(method, route).observe(seconds)

    def observe_timings(self, endpoint: str, timings: Mapping[str, float]) -> None:
        # Only durations: the dict also carries markers such as `rerank_unavailable`.
        for key, ms in timings.items():
            if key.endswith("_ms"):
                self.stage_duration.labels(endpoint, key.removesuffix("_ms")).observe(ms / 1000)

    def observe_answer(
        self, *, kb: str, key: str, timings: Mapping[str, float], usage: Usage, refused: bool, degraded: bool,
        grounded: bool,
    ) -> None:  # fmt: skip
        self.observe_timings("ask", timings)
        self.tokens.labels("in", kb, key).inc(usage.prompt_tokens)
        self.tokens.labels("out", kb, key).inc(usage.completion_tokens)
        outcome = "degraded" if degraded else "refused" if refused else "grounded" if grounded else "ungrounded"
        self.answers.labels(kb, outcome).inc()

    def observe_answer_model(self, answer: Answer, *, kb: str, key: str) -> None:
        self.observe_answer(
            kb=kb, key=key, timings=answer.timings, usage=answer.usage, refused=answer.refused,
            degraded=answer.degraded, grounded=answer.grounded,
        )  # fmt: skip

    def stream_observer(self, *, kb: str, key: str) -> Callable[[str, Mapping[str, object]], None]:
        """Feed it every streamed event: it observes the answer once, from `citations` and `done`."""
        grounded = False

        def see(name: str, data: Mapping[str, object]) -> None:
            nonlocal grounded
            if name == "citations":
                grounded = bool(data.get("grounded"))
            elif name == "done":
                timings = data.get("timings")
                usage = data.get("usage")
                self.observe_answer(
                    kb=kb, key=key, timings=timings if isinstance(timings, dict) else {},
                    usage=Usage.model_validate(usage) if isinstance(usage, dict) else Usage(),
                    refused=bool(data.get("refused")), degraded=bool(data.get("degraded")), grounded=grounded,
                )  # fmt: skip

        return see

    @contextmanager
    def answer_in_flight(self) -> Iterator[None]:
        self.in_flight.inc()
        try:
            yield
        finally:
            self.in_flight.dec()

    def observe_retrieval(self, retrieval: Retrieval) -> None:
        self.retrieval_hits.observe(len(retrieval.hits))
        if retrieval.hits:
            best = retrieval.hits[0]
            self.retrieval_top_score.labels(best.score_kind).observe(best.score)

    def observe_feedback(self, rating: Rating) -> None:
        self.feedback.labels(rating).inc()

    def observe_error(self, component: Component, kind: ErrorKind) -> None:
        self.errors.labels(component, kind).inc()

    def observe_rate_limited(self, role: str) -> None:
        self.rate_limited.labels(role).inc()


class IngestCollector(Collector):
    """Jobs by state, queue depth and age, files by status and error code, and per-stage time, read from
    the job tables at each scrape."""

    def __init__(self, registry: Registry, *, on_error: Callable[[Component, ErrorKind], None]) -> None:
        self._registry = registry
        self._on_error = on_error

    def collect(self) -> Iterator[Metric]:
        try:
            families = self._read()
        except SQLAlchemyError as exc:
            # A scrape must not fail because the database does: the rest of /metrics still matters, and
            # the error counter says why the ingestion series are missing.
            log.warning("metrics: cannot read the job tables: %s", exc)
            self._on_error("database", failure_kind(exc))
            return
        yield from families

    def _read(self) -> list[Metric]:
        with self._registry.session() as session:
            by_state = dict(session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).tuples().all())
            oldest = session.execute(select(func.min(JobRow.created_at)).where(JobRow.state == "queued")).scalar()
            # Files, not jobs: workers share a job file by file, so one big running job still wants more workers.
            waiting = session.execute(
                select(func.count())
                .select_from(JobItemRow)
                .join(JobRow, JobRow.job_id == JobItemRow.job_id)
                .where(JobItemRow.status == "queued", JobItemRow.claim == 0, JobRow.cancel_requested.is_(False))
            ).scalar()
            files = session.execute(
                select(JobItemRow.status, JobItemRow.error_code, func.count()).group_by(
                    JobItemRow.status, JobItemRow.error_code
                )
            ).tuples().all()  # fmt: skip
            timings = session.scalars(select(JobRow.timings).where(JobRow.state.in_(("done", "failed")))).all()

        jobs = GaugeMetricFamily("kb_ingest_jobs", "Ingestion jobs by state", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], by_state.get(state, 0))
        depth = GaugeMetricFamily(
            "kb_ingest_queue_depth", "Files no worker has claimed yet (the worker autoscaling signal)",
            value=waiting or 0,
        )  # fmt: skip
        age = GaugeMetricFamily(
            "kb_ingest_oldest_queued_age_seconds", "How long the oldest queued job has waited (0: none waits)",
            value=max(0.0, (now() - as_utc(oldest)).total_seconds()) if oldest is not None else 0.0,
        )  # fmt: skip

        status_counts = dict.fromkeys(ITEM_STATUSES, 0)
        error_counts: dict[str, int] = {}
        for status, code, count in files:
            status_counts[status] = status_counts.get(status, 0) + count
            if status == "failed":
                error_counts[code or "unknown"] = error_counts.get(code or "unknown", 0) + count
        by_status = GaugeMetricFamily("kb_ingest_files", "Files of ingestion jobs by status", labels=["status"])
        for status, count in status_counts.items():
            by_status.add_metric([status], count)
        by_error = GaugeMetricFamily("kb_ingest_file_errors", "Files that failed, by error code", labels=["error_code"])
        for code, count in sorted(error_counts.items()):
            by_error.add_metric([code], count)

        totals: dict[str, tuple[int, float]] = {}
        for row in timings:
            for key, ms in (row or {}).items():
                if key.endswith("_ms"):
                    n, s = totals.get(key, (0, 0.0))
                    totals[key] = (n + 1, s + ms / 1000)
        stages = SummaryMetricFamily(
            "kb_ingest_stage_seconds", "Time finished jobs spent per stage (parse, chunk, embed, index)",
            labels=["stage"],
        )  # fmt: skip
        for key, (count, seconds) in sorted(totals.items()):
            stages.add_metric([key.removesuffix("_ms")], count_value=count, sum_value=seconds)
        return [jobs, depth, age, by_status, by_error, stages]


class MetricsMiddleware:
    """Counts every HTTP request by route template (not the raw path, which would make a series per
    document id), method, status and key role, and times it to the last byte. Pure ASGI, so streamed
    answers pass through unbuffered; outermost, so it sees the status the client got."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # Until a response starts, an exception means the error middleware outside answers 500.
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            # Count which backing service an unhandled error came from.
            component = failed_component(exc)
            if component is not None:
                self._metrics.observe_error(component, failure_kind(exc))
            raise
        finally:
            route = _route(scope, lambda: self._route_templates(scope))
            self._metrics.observe_request(
                method=scope["method"], route=route, status=status, role=_role(scope),
                seconds=time.perf_counter() - started,
            )  # fmt: skip

    def _route_templates(self, scope: Scope) -> list[tuple[re.Pattern[str], str]]:
        if self._templates is None:
            self._templates = _templates(scope.get("app"))
        return self._templates


def _route(scope: Scope, templates: Callable[[], Sequence[tuple[re.Pattern[str], str]]]) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str) or not path:
        # Refused before routing (no key, say): the documented route the path fits, if any. Nothing
        # matched (404s, scanners): one label value, never the raw path.
        return next((template for pattern, template in templates() if pattern.fullmatch(scope["path"])), "unmatched")
    # A mounted app (the UI) leaves its own route, relative to where it is mounted; or the mount itself
    # when nothing inside matched.
    prefix = str(scope.get("root_path", ""))
    return f"{prefix}/*" if isinstance(route, Mount) else prefix + path


def _templates(app: object) -> list[tuple[re.Pattern[str], str]]:
    """The API's route templates as patterns, from its OpenAPI schema (built once by FastAPI)."""
    openapi = getattr(app, "openapi", None)
    paths: dict[str, object] = openapi().get("paths", {}) if callable(openapi) else {}
    found = []
    for template in paths:
        pattern = re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template))
        found.append((re.compile(pattern), template))
    # Literal paths before templated ones (/docs/search before /docs/{doc_id}).
    return sorted(found, key=lambda item: item[1].count("{"))


def _role(scope: Scope) -> str:
    principal = scope.get("state", {}).get("principal")
    role = getattr(principal, "role", None)
    return str(getattr(role, "value", role)) if role is not None else "none"
