"""Versions, the atomic switch, deletes, and jobs that survive `kill -9` of their worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.container import Container, lite_layout
from app.settings import Settings
from core.types import SearchFilter
from ingest.documents import DocumentNotFound
from ingest.events import FileFinished, FileProgress, FileStarted, FileTask
from retrieval.milvus_connect import start_lite_server
from tests.conftest import ALL, EVERYTHING, ROOT
from tests.integration import docgen
from tests.integration.conftest import write

pytestmark = pytest.mark.integration


def test_same_version_gives_the_same_chunk_ids(container: Container, tmp_path: Path) -> None:
    f = write(tmp_path / "ids.md", "# Ids\n\n" + "Stable identifiers matter for upserts. " * 80)
    a = container.ingest.ingest_file(f, doc_id="ids.md", kb="ids_a")
    b = container.ingest.ingest_file(f, doc_id="ids.md", kb="ids_b")
    assert a.status == b.status == "indexed" and a.chunks > 1
    ids_a = [c.chunk_id for c in container.store.document_chunks("ids_a", "ids.md")]
    ids_b = [c.chunk_id for c in container.store.document_chunks("ids_b", "ids.md")]
    assert ids_a == ids_b and len(set(ids_a)) == len(ids_a)


def test_run_reports_every_file_as_one_stream_of_events(container: Container, tmp_path: Path) -> None:
    paths = [write(tmp_path / f"room-{i}.md", f"# Room {i}\n\nRoom {i} seats {i + 4} people. " * 20) for i in range(3)]
    paths.insert(1, write(tmp_path / "blank.md", ""))
    tasks = [FileTask(path=p, doc_id=p.name, key=10 + i) for i, p in enumerate(paths)]
    events = list(container.ingest.run(tasks, kb="events"))

    assert [e.task.key for e in events if isinstance(e, FileStarted)] == [10, 11, 12, 13]
    for task in tasks:
        own = [e for e in events if e.task is task]
        assert isinstance(own[0], FileStarted) and isinstance(own[-1], FileFinished)
        assert sum(isinstance(e, FileFinished) for e in own) == 1, task.doc_id
        written = [e.progress.chunks_done for e in own if isinstance(e, FileProgress)]
        assert written == sorted(written), task.doc_id  # progress only moves forward
    results = {e.task.doc_id: e.result for e in events if isinstance(e, FileFinished)}
    assert results["blank.md"].status == "failed" and results["blank.md"].error_code == "empty_file"
    for p in paths[0:1] + paths[2:]:
        r = results[p.name]
        assert r.status == "indexed" and r.chunks >= 1, r
        assert set(r.timings) == {"parse_ms", "chunk_ms", "embed_ms", "index_ms"} and r.timings["embed_ms"] > 0
        assert len(container.store.document_chunks("events", p.name)) == r.chunks
    # Small files share one embedding batch: none is written, let alone published, before the last starts.
    assert sum(r.chunks for r in results.values()) < container.settings.embedding.batch_size
    last_start = max(i for i, e in enumerate(events) if isinstance(e, FileStarted))
    published = [i for i, e in enumerate(events) if isinstance(e, FileFinished) and e.result.status == "indexed"]
    assert min(published) > last_start


def test_queries_see_exactly_one_version_while_a_document_is_replaced(container: Container, tmp_path: Path) -> None:
    kb, doc_id = "switch", "rota.md"
    f = tmp_path / "rota.md"

    def version_text(n: int) -> str:
        return f"# Rota\n\nThe on-call rota revision {n} names engineer number {n} for weekends.\n" * 3

    f.write_text(version_text(1))
    assert container.ingest.ingest_file(f, doc_id=doc_id, kb=kb).status == "indexed"
    seen: list[set[int]] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            r = container.query.search(
                "on-call rota weekends", kb=kb, top_k=10, flt=SearchFilter(access=ALL, doc_ids=[doc_id])
            )
            seen.append({h.chunk.version for h in r.hits})

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(2, 5):
            f.write_text(version_text(n))
            assert container.ingest.ingest_file(f, doc_id=doc_id, kb=kb).status == "indexed"
            # Purged while the reader runs, once the grace period has passed: a reader that looked up the
            # hidden versions just before the switch may still be searching for the old one until then (with
            # no grace at all, it would find nothing: the reason the grace period exists).
            time.sleep(1.2)
            container.versions.purge(kb, grace_s=1.0)
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 5
    assert all(len(versions) == 1 for versions in seen), [v for v in seen if len(v) != 1][:5]
    assert {h.chunk.version for h in container.query.search("rota", flt=EVERYTHING, kb=kb).hits} == {4}
    history = container.documents.history(kb, doc_id)
    assert [v.status for v in history] == ["ready", "replaced", "replaced", "replaced"]
    assert {c.version for c in container.store.document_chunks(kb, doc_id)} == {4}


def test_delete_hides_at_once_and_a_worker_purges_when_due(container: Container, tmp_path: Path) -> None:
    kb = "deletes"
    f = write(tmp_path / "gone.md", "# Gone\n\nThe old badge office is in building C.\n")
    container.ingest.ingest_file(f, doc_id="gone.md", kb=kb)
    assert container.query.search("badge office building", flt=EVERYTHING, kb=kb).hits
    assert container.documents.delete(kb, "gone.md") is True
    assert container.query.search("badge office building", flt=EVERYTHING, kb=kb).hits == []
    # Hidden, not yet purged: a query that started before the delete may still be reading these chunks.
    assert container.store.document_chunks(kb, "gone.md")
    assert container.versions.purge(kb) == 0
    assert container.documents.show(kb, "gone.md").status == "deleted"
    assert container.documents.delete(kb, "gone.md") is False
    with pytest.raises(DocumentNotFound):
        container.documents.delete(kb, "never.md")
    # A worker with nothing queued stays until the purge is due, does it, and leaves.
    assert container.worker().run(until_idle=True) == 0
    assert container.store.document_chunks(kb, "gone.md") == []
    assert container.registry.hidden_versions(kb) == []
    # Re-adding identical content after a delete indexes it again.
    assert container.ingest.ingest_file(f, doc_id="gone.md", kb=kb).status == "indexed"


def test_docs_and_jobs_commands(shared_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KB_HOME", str(shared_home))
    f = write(tmp_path / "faq.md", "# FAQ\n\nLunch is served from noon to two.\n")
    run = CliRunner().invoke
    result = run(cli, ["ingest", "--wait", "--acl", "staff", "--tag", "faq", str(f)])
    assert result.exit_code == 0, result.output
    listed = run(cli, ["docs", "list", "--json"])
    docs = json.loads(listed.stdout)
    assert [(d["doc_id"], d["acl_groups"], d["tags"]) for d in docs] == [("faq.md", ["staff"], ["faq"])]
    shown = json.loads(run(cli, ["docs", "show", "--json", "faq.md"]).stdout)
    assert shown["current"]["chunks"] >= 1 and shown["current"]["sha256"]
    jobs = json.loads(run(cli, ["jobs", "list", "--json"]).stdout)
    assert [(j["state"], j["files"], j["failed"]) for j in jobs] == [("done", 1, 0)]
    job = json.loads(run(cli, ["jobs", "show", "--json", jobs[0]["job_id"]]).stdout)
    assert job["state"] == "done" and job["documents"][0]["status"] == "indexed"
    assert job["files"] == {"total": 1, "done": 1, "failed": 0} and job["chunks_done"] >= 1
    assert set(job["timings_ms"]) >= {"parse_ms", "chunk_ms", "embed_ms", "index_ms"}

    container = Container(Settings(home=shared_home))
    assert container.store.document_chunks("default", "faq.md")
    deleted = run(cli, ["docs", "delete", "faq.md"])
    assert deleted.exit_code == 0 and "purged in 2 s by a background worker" in deleted.output
    history = json.loads(run(cli, ["docs", "history", "--json", "faq.md"]).stdout)
    assert [v["status"] for v in history] == ["deleted"]
    # No worker was running, so the command started one: it purges the chunks when due, then leaves.
    deadline = time.monotonic() + 180
    while container.store.document_chunks("default", "faq.md") or container.jobs.live_workers():
        assert time.monotonic() < deadline, "the background worker did not purge the deleted document"
        time.sleep(0.5)
    assert container.registry.hidden_versions("default") == []
    assert (shared_home / "logs" / "worker.log").exists()

    missing = run(cli, ["docs", "show", "nope.md"])
    assert missing.exit_code == 1 and "no document" in missing.output
    assert run(cli, ["jobs", "show", "0" * 32]).exit_code == 1
    container.store.close()


def test_ingest_without_wait_queues_a_job_that_a_background_worker_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KB_HOME", str(tmp_path / "var"))
    f = write(tmp_path / "kitchen.md", "# Kitchen\n\nThe dishwasher runs at six every evening.\n")
    queued = CliRunner().invoke(cli, ["ingest", "--json", str(f)])
    assert queued.exit_code == 0, queued.output
    job_id = json.loads(queued.stdout)["job_id"]
    deadline = time.monotonic() + 180
    while True:
        shown = CliRunner().invoke(cli, ["jobs", "show", "--json", job_id])
        job = json.loads(shown.stdout)
        if job["state"] in ("done", "failed"):
            break
        assert time.monotonic() < deadline, f"background worker did not finish: {job}"
        time.sleep(1)
    assert job["state"] == "done" and job["documents"][0]["status"] == "indexed"
    assert (tmp_path / "var" / "logs" / "worker.log").exists()


def test_the_api_worker_thread_runs_jobs_and_purges_deleted_documents(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    home = tmp_path / "var"
    settings = Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False},  # type: ignore[arg-type]
        ingest={"purge_grace_s": 0.5}, api={"ui_enabled": False},  # type: ignore[arg-type]
    )  # fmt: skip
    container = Container(settings)
    f = write(tmp_path / "desk.md", "# Desks\n\nHot desks on floor four are booked through the front desk.\n")

    def until(what: str, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 120
        while not done():
            assert time.monotonic() < deadline, what
            time.sleep(0.2)

    with TestClient(create_app(settings, container)):
        job_id = container.documents.submit([f], kb="default", uploads_dir=container.uploads_dir)

        def job_finished() -> bool:
            info = container.documents.job(job_id)
            return info is not None and info.finished

        until("the API's worker did not run the job", job_finished)
        info = container.documents.job(job_id)
        assert info is not None and [d.status for d in info.documents] == ["indexed"]
        assert container.documents.delete("default", "desk.md") is True
        # The purge deletes the chunks, then records it in the registry: wait for the record, the last step.
        until("the API's worker did not purge", lambda: container.registry.hidden_versions("default") == [])
        assert container.store.document_chunks("default", "desk.md") == []
    container.store.close()


@pytest.fixture
def shared_home(tmp_path: Path) -> Iterator[Path]:
    """A KB_HOME served by a `milvus-lite server`, as under `kb up`, so two processes can share it."""
    home = tmp_path / "var"
    proc = start_lite_server(lite_layout(Settings(home=home)))
    yield home
    proc.terminate()
    proc.wait(timeout=20)


def test_a_job_whose_worker_is_killed_resumes_without_duplicates_or_orphans(shared_home: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    docgen.long_pdf(docs / "a-manual.pdf", pages=24)
    docgen.long_pdf(docs / "b-manual.pdf", pages=12)
    write(docs / "c-note.md", "# Note\n\nThe loading dock closes at five.\n")
    settings = Settings(
        home=shared_home, embedding={"batch_size": 8}, ingest={"pdf_batch_pages": 2, "purge_grace_s": 0}
    )
    container = Container(settings)
    job_id = container.documents.submit([docs], kb="default", uploads_dir=shared_home / "uploads")

    env = {
        **os.environ,
        "KB_HOME": str(shared_home),
        "KB_EMBEDDING__BATCH_SIZE": "8",
        "KB_INGEST__PDF_BATCH_PAGES": "2",
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "jobs", "work", "--until-idle"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            view = container.jobs.get(job_id)
            assert view is not None
            if view.job.chunks_done >= 16 and view.job.files_done == 0:
                break  # mid-way through the first PDF, with chunks already in Milvus
            assert worker.poll() is None, "worker exited before it could be killed"
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.05)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()

    half = container.jobs.get(job_id)
    assert half is not None and half.job.state == "running"
    partial = container.store.document_chunks("default", "a-manual.pdf")
    assert partial, "the killed worker should have left chunks behind"

    # A new worker notices the dead one, rolls back the half-indexed version and finishes the job.
    assert container.worker().run(until_idle=True) == 1
    assert_resumed_without_duplicates_or_orphans(container, job_id)
    container.store.close()


def assert_resumed_without_duplicates_or_orphans(container: Container, job_id: str) -> None:
    done = container.jobs.get(job_id)
    assert done is not None and done.job.state == "done" and done.job.attempts == 2, done.job.error
    assert [(i.status, i.error) for i in done.items] == [("indexed", "")] * 3
    # The PDF under way when the worker died was started twice; the others once.
    assert [i.attempts for i in done.items] == [2, 1, 1]
    history = container.documents.history("default", "a-manual.pdf")
    assert [(v.status, v.error_code) for v in history] == [("ready", ""), ("interrupted", "interrupted")]

    total = 0
    for doc_id in ("a-manual.pdf", "b-manual.pdf", "c-note.md"):
        current = container.registry.current_version("default", doc_id)
        assert current is not None
        stored = container.store.document_chunks("default", doc_id)
        ids = [c.chunk_id for c in stored]
        assert len(ids) == len(set(ids)) == current.chunk_count, doc_id  # no duplicates
        assert {c.version for c in stored} == {current.version}, doc_id  # no orphans of the killed version
        total += current.chunk_count
    assert container.store.count("default") == total
    assert container.registry.hidden_versions("default") == []


def test_an_api_killed_mid_job_finishes_the_job_when_it_comes_back(tmp_path: Path) -> None:
    """kill -9 of a `kb serve` whose own worker thread is mid-job; the restarted API's worker sees the dead
    PID, rolls back the half-indexed version and completes the job."""
    from tests.api_process import api_process
    from tests.api_process import shared_home as api_home

    docs = tmp_path / "docs"
    docs.mkdir()
    docgen.long_pdf(docs / "a-manual.pdf", pages=24)
    docgen.long_pdf(docs / "b-manual.pdf", pages=4)
    write(docs / "c-note.md", "# Note\n\nThe loading dock closes at five.\n")
    env = {"KB_INGEST__WORKER_IN_API": "true", "KB_EMBEDDING__BATCH_SIZE": "8", "KB_INGEST__PDF_BATCH_PAGES": "2",
           "KB_INGEST__PURGE_GRACE_S": "0"}  # fmt: skip
    with api_home(tmp_path / "var", tmp_path / "models", **env) as kb_home:
        container = Container(kb_home.settings)
        job_id = container.documents.submit([docs], kb="default", uploads_dir=container.uploads_dir)
        with api_process(kb_home) as api:
            deadline = time.monotonic() + 300
            while True:
                view = container.jobs.get(job_id)
                assert view is not None
                if view.job.chunks_done >= 16 and view.job.files_done == 0:
                    break  # mid-way through the first PDF, with chunks already in Milvus
                assert api.proc.poll() is None, api.log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the API's worker made no progress"
                time.sleep(0.05)
            os.kill(api.proc.pid, signal.SIGKILL)
            api.proc.wait(timeout=30)
        half = container.jobs.get(job_id)
        assert half is not None and half.job.state == "running"
        assert container.store.document_chunks("default", "a-manual.pdf"), "the killed API left no chunks"

        with api_process(kb_home):
            deadline = time.monotonic() + 300
            while not (info := container.documents.job(job_id)) or not info.finished:
                assert time.monotonic() < deadline, "the restarted API did not finish the job"
                time.sleep(0.5)
            # The purge of what the dead worker left is the restarted worker's; wait for its record.
            while container.registry.hidden_versions("default"):
                assert time.monotonic() < deadline, "the restarted API did not purge"
                time.sleep(0.2)
        assert_resumed_without_duplicates_or_orphans(container, job_id)
        container.store.close()


def test_an_api_killed_mid_upload_leaves_nothing_half_done_and_takes_the_upload_again(tmp_path: Path) -> None:
    """kill -9 of `kb serve` while a multipart upload is still arriving: no job, no document, no chunk comes
    of it; the restarted API takes the same upload whole and indexes it."""
    from app.access.roles import Role
    from tests.api_process import api_process
    from tests.api_process import shared_home as api_home

    boundary = "kbcrashtestboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="kb"\r\n\r\ndefault\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="groups"\r\n\r\nstaff\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="dock.md"\r\n'
        "Content-Type: text/markdown\r\n\r\n"
    ).encode()
    text = ("# Loading dock\n\n" + "The loading dock closes at five in the afternoon. " * 400 + "\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield head
        for i in range(0, len(text), 1000):
            yield text[i : i + 1000]
            if i >= 4000:
                sent.set()  # part of the file is on the server; the rest never comes
                time.sleep(0.5)
        yield tail

    with api_home(tmp_path / "var", tmp_path / "models", KB_INGEST__WORKER_IN_API="true") as kb_home:
        container = Container(kb_home.settings)
        editor = container.keys.create(name="editor", role=Role.editor, groups=["staff"], kbs=["default"])
        headers = {
            "Authorization": f"Bearer {editor.secret}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        }
        with api_process(kb_home) as api:
            failures: list[BaseException] = []

            def upload() -> None:
                try:
                    httpx.post(f"{api.url}/documents", content=slow_body(), headers=headers, timeout=60)
                except httpx.HTTPError as exc:  # the server is killed under it: expected
                    failures.append(exc)

            thread = threading.Thread(target=upload)
            thread.start()
            assert sent.wait(60), "the upload never started"
            os.kill(api.proc.pid, signal.SIGKILL)
            api.proc.wait(timeout=30)
            thread.join(timeout=60)
        assert failures, "the upload should have been cut off by the kill"
        assert container.jobs.recent() == [] and container.registry.documents("default") == []
        assert container.store.count("default") == 0

        with api_process(kb_home) as api:
            r = httpx.post(f"{api.url}/documents", content=head + text + tail, headers=headers, timeout=60)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 300
            while not (info := container.documents.job(job_id)) or not info.finished:
                assert time.monotonic() < deadline, "the restarted API did not index the upload"
                time.sleep(0.5)
        assert [d.status for d in info.documents] == ["indexed"]
        current = container.registry.current_version("default", "dock.md")
        assert current is not None and current.status == "ready"
        assert container.store.count("default") == current.chunk_count > 0
        container.store.close()
