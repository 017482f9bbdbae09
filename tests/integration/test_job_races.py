"""Races between workers, deletes and jobs: nothing lost, nothing resurrected, nothing left behind.

Real SQLite, real Milvus Lite, real MiniLM. The interleavings are driven deterministically: a worker is
paused inside its embedding call (a gate around the real embedder) while the test does the other thing,
then released."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.container import Container
from app.settings import Settings
from ingest.jobs import JobStore
from ingest.worker import JobWorker
from tests.integration.conftest import write
from tests.integration.gates import assert_store_matches_registry, gate_embedder, gated, in_thread

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The module's KB_HOME and a container on it whose embedder the tests can gate; the registry on
    SQLite, then on PostgreSQL."""
    root = tmp_path_factory.mktemp(f"races-{request.param}")
    database = {"url": request.getfixturevalue("postgres").new_database()} if request.param == "postgres" else {}
    settings = Settings(
        home=root, models_dir=root / "models", ingest={"purge_grace_s": 0}, database=database,  # type: ignore[arg-type]
    )  # fmt: skip
    c = Container(settings)
    gate_embedder(c)
    yield c
    c.store.close()
    c.registry.engine.dispose()


def text(label: str, n: int = 6) -> str:
    return f"# Policy\n\n{label}: the travel policy allows economy flights for trips under six hours.\n\n" * n


def test_a_delete_during_a_reindex_stays_deleted(home: Container, tmp_path: Path) -> None:
    c, kb = home, "race_delete"
    f = write(tmp_path / "policy.md", text("FIRST"))
    assert c.ingest.ingest_file(f, doc_id="policy.md", kb=kb).status == "indexed"
    f.write_text(text("REINDEX-DELETE"))
    gate = gated(c, "REINDEX-DELETE")
    job_id = c.documents.submit([f], kb=kb, uploads_dir=c.uploads_dir, doc_id="policy.md")
    worker, errors = in_thread(lambda: c.worker().run(until_idle=True))
    assert gate.reached.wait(120), "the worker never began the new version"
    assert c.documents.delete(kb, "policy.md") is True
    gate.go.set()
    worker.join(120)
    assert not errors, errors
    doc = c.registry.document(kb, "policy.md")
    assert doc is not None and doc.status == "deleted"
    assert c.registry.current_version(kb, "policy.md") is None
    view = c.jobs.get(job_id)
    assert view is not None and view.job.state in ("done", "failed")
    assert [(i.status, i.error_code) for i in view.items] == [("failed", "document_deleted")]
    assert_store_matches_registry(c, kb)
    assert c.store.document_chunks(kb, "policy.md") == []


def test_the_later_begun_version_wins_when_two_jobs_publish_out_of_order(home: Container, tmp_path: Path) -> None:
    c, kb = home, "race_order"
    old, new = (
        write(tmp_path / "old" / "policy.md", text("OLDER-JOB")),
        write(tmp_path / "new" / "policy.md", text("NEWER")),
    )
    gate = gated(c, "OLDER-JOB")
    first = c.documents.submit([old], kb=kb, uploads_dir=c.uploads_dir, doc_id="policy.md")
    slow, slow_errors = in_thread(c.worker().run_job, *claim(c.jobs))
    assert gate.reached.wait(120)
    second = c.documents.submit([new], kb=kb, uploads_dir=c.uploads_dir, doc_id="policy.md")
    assert c.worker().run(until_idle=True) == 1  # the second job, begun later, publishes first
    gate.go.set()
    slow.join(120)
    assert not slow_errors, slow_errors
    current = c.registry.current_version(kb, "policy.md")
    newer_view, older_view = c.jobs.get(second), c.jobs.get(first)
    assert newer_view is not None and older_view is not None
    assert current is not None and current.version == newer_view.items[0].version
    assert [i.error_code for i in older_view.items] == ["superseded"]
    assert all("NEWER" in ch.text for ch in c.store.document_chunks(kb, "policy.md"))
    assert_store_matches_registry(c, kb)


def claim(jobs: JobStore) -> tuple[Any, ...]:
    """What a worker's poll does: claim the oldest queued job (with its fencing token)."""
    taken = jobs.claim("test-worker")
    assert taken is not None
    return (taken,)


def test_a_worker_paused_past_its_heartbeat_timeout_loses_the_job(home: Container, tmp_path: Path) -> None:
    c, kb = home, "race_pause"
    folder = tmp_path / "docs"
    for i, label in enumerate(["ALPHA", "PAUSED-BETA", "GAMMA"]):
        write(folder / f"{i}-{label.lower()}.md", text(label))
    gate = gated(c, "PAUSED-BETA")
    job_id = c.documents.submit([folder], kb=kb, uploads_dir=c.uploads_dir)
    # Heartbeats far apart: paused in its embedding call, this worker looks dead to the others.
    paused = JobWorker(
        jobs=c.jobs, pipeline=c.ingest, versions=c.versions, uploads_dir=c.uploads_dir, heartbeat_s=600,
        progress_every_s=600,
    )  # fmt: skip
    first, first_errors = in_thread(paused.run_job, *claim(c.jobs))
    assert gate.reached.wait(120)
    impatient = JobStore(c.registry, stale_after_s=0)
    other = JobWorker(jobs=impatient, pipeline=c.ingest, versions=c.versions, uploads_dir=c.uploads_dir)
    assert other.recover() == 1
    assert other.run(until_idle=True) == 1
    done = c.jobs.get(job_id)
    assert done is not None and done.job.state == "done"
    published = {i.doc_id: i.version for i in done.items}
    gate.go.set()  # the paused worker wakes up and carries on as if nothing happened
    first.join(120)
    assert not first_errors, first_errors
    after = c.jobs.get(job_id)
    assert after is not None and after.job.state == "done"
    assert [i.status for i in after.items] == ["indexed"] * 3
    # What the worker that took over published stays; the paused worker's versions were never shown.
    assert {i.doc_id: i.version for i in after.items} == published
    for doc_id, version in published.items():
        current = c.registry.current_version(kb, doc_id)
        assert current is not None and current.version == version, doc_id
        stale = [v.status for v in c.registry.versions(kb, doc_id) if v.version < version]
        assert stale == ["interrupted"] * len(stale), (doc_id, stale)
    assert_store_matches_registry(c, kb)
