"""/metrics without models: who may read it, HTTP series by route template and role, the ingestion series
read from the job tables (real SQLite), failure classification, and prometheus-client's multiprocess mode
(in child processes, because the mode is fixed when prometheus-client is imported)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.access.roles import Role
from app.container import Container
from app.main import create_app
from app.ops.metrics import Metrics, failed_component, failure_kind
from app.settings import Settings
from tests.conftest import ROOT

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def make_settings(home: Path, **api: object) -> Settings:
    return Settings(
        home=home, models_dir=home / "models", ingest={"worker_in_api": False},  # type: ignore[arg-type]
        api={"ui_enabled": False, **api},  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.fixture
def container(tmp_path: Path) -> Iterator[Container]:
    yield Container(make_settings(tmp_path))


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_metrics_need_an_admin_key(container: Container) -> None:
    client = TestClient(create_app(container.settings, container))
    admin = container.keys.create(name="ops", role=Role.admin, kbs=["*"])
    staff = container.keys.create(name="staff", role=Role.employee, kbs=["default"])
    assert client.get("/metrics").status_code == 401
    denied = client.get("/metrics", headers=bearer(staff.secret))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    r = client.get("/metrics", headers=bearer(admin.secret))
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "# TYPE kb_http_requests_total counter" in r.text


def test_metrics_public_setting_opens_only_the_metrics(tmp_path: Path) -> None:
    c = Container(make_settings(tmp_path, metrics_public=True))
    client = TestClient(create_app(c.settings, c))
    assert client.get("/metrics").status_code == 200
    assert client.get("/me").status_code == 401


def test_requests_are_counted_by_route_template_status_and_role(container: Container) -> None:
    client = TestClient(create_app(container.settings, container))
    admin = container.keys.create(name="ops", role=Role.admin, kbs=["*"])
    staff = container.keys.create(name="staff", role=Role.employee, kbs=["default"])
    for _ in range(3):
        assert client.get("/me", headers=bearer(staff.secret)).status_code == 200
    assert client.get("/me").status_code == 401
    assert client.get("/no/such/path/123", headers=bearer(staff.secret)).status_code == 404
    assert client.get("/healthz").status_code == 200
    found = samples(client.get("/metrics", headers=bearer(admin.secret)).text)
    count = "kb_http_requests_total"
    assert value(found, count, method="GET", route="/me", status="200", role="employee") == 3
    assert value(found, count, method="GET", route="/me", status="401", role="none") == 1
    # A path no route matches is one series, whatever was tried; the raw path is never a label.
    assert value(found, count, method="GET", route="unmatched", status="404", role="employee") == 1
    assert value(found, count, method="GET", route="/healthz", status="200", role="none") == 1
    assert not any("/no/such" in str(labels) for _, labels in found)
    assert value(found, "kb_http_request_duration_seconds_count", method="GET", route="/me") == 4


def test_ingestion_series_come_from_the_job_tables(container: Container, tmp_path: Path) -> None:
    metrics = container.metrics
    before = samples(metrics.render().decode())
    assert value(before, "kb_ingest_queue_depth") == 0
    assert value(before, "kb_ingest_jobs", state="queued") == 0

    good = tmp_path / "notes.md"
    good.write_text("# Notes\n\nThe canteen opens at 8 am.\n")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"not a zip archive at all")
    job_id = container.documents.submit([good, broken], kb="default", uploads_dir=container.uploads_dir)
    view = container.jobs.get(job_id)
    assert view is not None
    code = next(item.error_code for item in view.items if item.status == "failed")

    found = samples(metrics.render().decode())
    assert value(found, "kb_ingest_queue_depth") == 1
    assert value(found, "kb_ingest_jobs", state="queued") == 1
    assert value(found, "kb_ingest_jobs", state="running") == 0
    assert 0 <= value(found, "kb_ingest_oldest_queued_age_seconds") < 60
    assert value(found, "kb_ingest_files", status="queued") == 1
    assert value(found, "kb_ingest_files", status="failed") == 1
    assert code and value(found, "kb_ingest_file_errors", error_code=code) == 1


def test_a_database_failure_at_scrape_time_is_counted_not_raised(container: Container) -> None:
    metrics = container.metrics
    with container.registry.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE job_items")
        conn.exec_driver_sql("DROP TABLE jobs")
    # The collector logs, counts and leaves the ingestion series out; the rest of /metrics is served.
    text = metrics.render().decode()
    found = samples(text)
    assert "kb_ingest_queue_depth" not in text
    assert value(found, "kb_component_errors_total", component="database", kind="error") == 1


def test_hooks_for_branches_that_report_later() -> None:
    metrics = Metrics()
    metrics.observe_feedback("up")
    metrics.observe_feedback("up")
    metrics.observe_feedback("down")
    metrics.observe_rate_limited("employee")
    metrics.observe_error("milvus", "timeout")
    with metrics.answer_in_flight():
        inside = samples(metrics.render().decode())
    after = samples(metrics.render().decode())
    assert value(after, "kb_feedback_total", rating="up") == 2
    assert value(after, "kb_feedback_total", rating="down") == 1
    assert value(after, "kb_rate_limited_total", role="employee") == 1
    assert value(after, "kb_component_errors_total", component="milvus", kind="timeout") == 1
    assert value(inside, "kb_answers_in_flight") == 1 and value(after, "kb_answers_in_flight") == 0
    # No ingestion series without a registry to read them from.
    assert not any(name.startswith("kb_ingest") for name, _ in after)


def test_failures_are_classified_through_their_cause_chain() -> None:
    import httpx
    from sqlalchemy.exc import OperationalError

    from core.protocols import GeneratorUnavailable

    def chained(outer: Exception, cause: Exception) -> Exception:
        outer.__cause__ = cause
        return outer

    assert failure_kind(chained(GeneratorUnavailable("x"), httpx.ReadTimeout("slow"))) == "timeout"
    assert failure_kind(chained(GeneratorUnavailable("x"), httpx.ConnectError("refused"))) == "error"
    assert failure_kind(TimeoutError()) == "timeout"
    db = OperationalError("SELECT 1", {}, Exception("database is locked"))
    assert failed_component(chained(RuntimeError("wrapped"), db)) == "database"
    assert failed_component(ValueError("plain bug")) is None


def test_each_metrics_object_owns_its_registry() -> None:
    a, b = Metrics(), Metrics()
    a.observe_feedback("up")
    assert value(samples(a.render().decode()), "kb_feedback_total", rating="up") == 1
    assert value(samples(b.render().decode()), "kb_feedback_total", rating="up") == 0


MULTIPROCESS_CHILD = textwrap.dedent(
    """
    import sys
    from app.ops.metrics import Metrics
    from core.types import Usage

    m = Metrics()
    assert m.multiprocess
    m.observe_answer(kb="default", key="svc", timings={"total_ms": 120.0}, usage=Usage(prompt_tokens=7,
                     completion_tokens=3), refused=False, degraded=True, grounded=False)
    if sys.argv[1] == "hold":
        m.in_flight.inc()
    else:
        sys.stdout.write(m.render().decode())
    """
)


def test_multiprocess_mode_merges_every_process(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def child(mode: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", MULTIPROCESS_CHILD, mode], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=120, check=True,
        )  # fmt: skip
        return done.stdout

    child("hold")
    child("hold")
    found = samples(child("render"))
    assert value(found, "kb_answers_total", kb="default", outcome="degraded") == 3
    assert value(found, "kb_llm_tokens_total", direction="in", kb="default", key="svc") == 21
    assert value(found, "kb_stage_duration_seconds_count", endpoint="ask", stage="total") == 3
    # livesum: only live processes count, so the two that exited holding an answer add nothing.
    assert value(found, "kb_answers_in_flight") == 0
