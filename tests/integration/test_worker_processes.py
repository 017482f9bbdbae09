"""Scale-out ingestion with real worker processes: two `kb worker` processes share one 50-file job on the
same KB_HOME (one registry, one Milvus Lite server, one uploads folder). Every file is indexed exactly
once, by exactly one of them, and both get a share; a kill -9 of one mid-job loses and duplicates nothing.

Real processes, real SQLite and PostgreSQL, real Milvus Lite, real MiniLM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import select

from app.container import Container, lite_layout
from app.settings import Settings
from ingest.jobs import JobClaimRow, JobItemRow
from retrieval.milvus_connect import start_lite_server
from tests.integration.conftest import write
from tests.integration.gates import assert_store_matches_registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FILES = 50
READY = "ready: polling the job queue"


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path
    handle: IO[bytes]

    @property
    def name(self) -> str:
        import socket

        return f"{socket.gethostname()}:{self.proc.pid}"

    def ready(self, marker: str = READY) -> bool:
        return marker in self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.handle.close()


@dataclass
class Home:
    settings: Settings
    env: dict[str, str]
    container: Container


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def home(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    """A KB_HOME shared by the test and its worker processes; the registry on SQLite, then on PostgreSQL
    (where claims lock with FOR UPDATE SKIP LOCKED)."""
    root = tmp_path_factory.mktemp(f"workers-{request.param}")
    url = request.getfixturevalue("postgres").new_database() if request.param == "postgres" else ""
    env = {
        **os.environ,
        "KB_HOME": str(root),
        "PYTHONPATH": str(ROOT),
        # Two files a claim: a 50-file job is split into many claims the two workers compete for.
        "KB_INGEST__CLAIM_FILES": "2",
        "KB_INGEST__PURGE_GRACE_S": "0",
        "KB_LOG_LEVEL": "INFO",
        "KB_DATABASE__URL": url,
    }
    settings = Settings(
        home=root, ingest={"purge_grace_s": 0, "claim_files": 2}, database={"url": url},  # type: ignore[arg-type]
    )  # fmt: skip
    # A Milvus Lite folder opens in one process only: every process talks to one server, as under `kb up`.
    server = start_lite_server(lite_layout(settings))
    container = Container(settings)
    try:
        yield Home(settings, env, container)
    finally:
        container.store.close()
        container.registry.engine.dispose()
        server.terminate()
        server.wait(timeout=30)


def start_workers(home: Home, n: int, tag: str, *, args: tuple[str, ...] = (), ready: str = READY) -> list[Worker]:
    """`n` `kb worker` processes (with `args`), once each has logged `ready`."""
    workers = []
    for i in range(n):
        log = home.settings.home / f"worker-{tag}-{i}.log"
        handle = log.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", *args], cwd=ROOT, env=home.env, stdin=subprocess.DEVNULL,
            stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
        workers.append(Worker(proc, log, handle))
    deadline = time.monotonic() + 300
    try:
        while not all(w.ready(ready) for w in workers):
            for w in workers:
                assert w.proc.poll() is None, w.log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the workers did not get ready"
            time.sleep(0.2)
    except BaseException:
        # A worker left running would take the next test's files.
        for w in workers:
            w.stop()
        raise
    return workers


def corpus(folder: Path, label: str) -> dict[str, int]:
    """FILES markdown files of one to three sections; returns each file's number of sections."""
    sections = {}
    for n in range(FILES):
        count = 1 + n % 3
        body = "".join(
            f"## Section {s}\n\n{label} note {n}.{s}: the archive room on floor {n % 7} keeps the records of "
            f"project {n * 31 % 97} for {s + 2} years before they are shredded.\n\n"
            for s in range(count)
        )
        write(folder / f"note-{n:02}.md", f"# Note {n}\n\n{body}")
        sections[f"note-{n:02}.md"] = count
    return sections


def wait_done(home: Home, job_id: str, workers: list[Worker], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        view = home.container.jobs.get(job_id)
        assert view is not None
        if view.job.state in ("done", "failed", "cancelled"):
            return
        for w in workers:
            assert w.proc.poll() is None, w.log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"job stuck: {view.job.state}, {view.job.files_done}/{FILES}"
        time.sleep(0.2)


def under_way(c: Container, job_id: str, worker: str) -> bool:
    """Whether `worker` holds an active claim with a file it has started."""
    with c.registry.session() as session:
        tokens = session.scalars(
            select(JobClaimRow.token).where(
                JobClaimRow.job_id == job_id, JobClaimRow.worker == worker, JobClaimRow.state == "active"
            )
        ).all()
        running = session.scalars(
            select(JobItemRow.claim).where(JobItemRow.job_id == job_id, JobItemRow.status == "running")
        ).all()
    return bool(set(tokens) & set(running))


def assert_each_file_once(home: Home, kb: str, job_id: str, *, killed: bool = False) -> None:
    c = home.container
    view = c.jobs.get(job_id)
    assert view is not None and view.job.state == "done", view.job.error if view else None
    assert (view.job.files_done, view.job.files_failed) == (FILES, 0)
    # A worker killed after publishing a file but before recording it leaves it published: the file's
    # next attempt finds it `unchanged` (its one version stays, nothing is indexed twice).
    statuses = {"indexed", "unchanged"} if killed else {"indexed"}
    assert all(i.status in statuses for i in view.items), [i.status for i in view.items]
    assert sum(i.status == "unchanged" for i in view.items) <= (2 if killed else 0)
    assert view.job.chunks_done == sum(i.chunks for i in view.items)
    for item in view.items:
        ready = [v for v in c.registry.versions(kb, item.doc_id) if v.status == "ready"]
        assert [v.version for v in ready] == [item.version], item.doc_id  # one version visible
        assert ready[0].chunk_count == item.chunks > 0
    assert_store_matches_registry(c, kb)  # no chunk twice, none of an unpublished version


def test_two_worker_processes_share_a_50_file_job_each_file_exactly_once(home: Home, tmp_path: Path) -> None:
    workers = start_workers(home, 2, "share")
    try:
        corpus(tmp_path / "docs", "SHARED")
        job_id = home.container.documents.submit(
            [tmp_path / "docs"], kb="shared", uploads_dir=home.container.uploads_dir
        )
        wait_done(home, job_id, workers)
    finally:
        for w in workers:
            w.stop()
    assert_each_file_once(home, "shared", job_id)
    view = home.container.jobs.get(job_id)
    assert view is not None
    assert [i.attempts for i in view.items] == [1] * FILES  # each file started once, by one worker
    by_worker = {w.name: sum(i.worker == w.name for i in view.items) for w in workers}
    assert sum(by_worker.values()) == FILES and all(by_worker.values()), by_worker  # both did some
    assert not (home.container.uploads_dir / job_id).exists()


def kill_one_mid_job(home: Home, workers: list[Worker], folder: Path) -> str:
    """Submit a corpus, kill -9 the first worker once it has finished a file and holds one under way, let
    the second finish the job; the job's id. Stops both workers whatever happens."""
    victim, survivor = workers
    try:
        corpus(folder, "KILLED")
        c = home.container
        job_id = c.documents.submit([folder], kb="killed", uploads_dir=c.uploads_dir)
        deadline = time.monotonic() + 300
        while True:  # until the victim has finished a file and holds a file under way
            view = c.jobs.get(job_id)
            assert view is not None and view.job.state != "done", "the job ended before the kill"
            if any(i.worker == victim.name for i in view.items) and under_way(c, job_id, victim.name):
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=30)  # reaped: its PID is dead, not a zombie the survivor takes for alive
        wait_done(home, job_id, [survivor])
    finally:
        for w in workers:
            w.stop()
    return job_id


def test_a_kill_9_of_one_worker_mid_job_loses_nothing(home: Home, tmp_path: Path) -> None:
    workers = start_workers(home, 2, "kill")
    victim, survivor = workers
    c = home.container
    job_id = kill_one_mid_job(home, workers, tmp_path / "docs")
    assert_each_file_once(home, "killed", job_id, killed=True)
    view = c.jobs.get(job_id)
    assert view is not None
    assert {i.worker for i in view.items} <= {victim.name, survivor.name}
    assert any(i.worker == victim.name for i in view.items)
    # What the victim had under way was rolled back and redone by the survivor.
    interrupted = [v for i in view.items for v in c.registry.versions("killed", i.doc_id) if v.status == "interrupted"]
    for v in interrupted:
        item = next(i for i in view.items if i.doc_id == v.doc_id)
        assert item.worker == survivor.name and item.version > v.version
