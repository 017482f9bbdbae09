"""Version bookkeeping on a real SQLite registry, with a store that records what it is told to delete:
the switch, rollbacks, and a purge that is scheduled (due after the grace period), never slept for."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from core.types import Chunk
from ingest.errors import DocIdConflict
from ingest.jobs import JobFile, JobStore
from ingest.registry import DocumentDeletedMeanwhile, LostJob, Registry, Superseded, VersionRef, now
from ingest.versions import Versions


class Store:
    def __init__(self) -> None:
        self.deleted: list[tuple[str, str, int]] = []
        self.flushed: list[str] = []

    def delete_version(self, kb: str, doc_id: str, version: int) -> None:
        self.deleted.append((kb, doc_id, version))

    def flush(self, kb: str) -> None:
        self.flushed.append(kb)

    def upsert(self, kb: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int:
        raise AssertionError("version bookkeeping never writes chunks")


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return now() + self.offset


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    """The registry on SQLite, and on PostgreSQL (a server started for the session, tests/postgres.py)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'kb.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    r = Registry(url)
    yield r
    r.engine.dispose()


def new_version(versions: Versions, path: Path, text: str, kb: str = "kb") -> int:
    path.write_text(text)
    begun = versions.begin(kb, path.name, path, acl_groups=[], tags=[])
    assert not begun.unchanged
    versions.publish(kb, path.name, begun.version, title="t", pages=None, chunks=3, timings={})
    return begun.version


def test_a_replaced_version_is_hidden_at_once_and_purged_only_when_due(registry: Registry, tmp_path: Path) -> None:
    store, clock = Store(), Clock()
    versions = Versions(registry, store, purge_grace_s=30, clock=clock)  # type: ignore[arg-type]
    doc = tmp_path / "a.md"
    assert new_version(versions, doc, "one") == 1
    assert versions.next_purge_in() is None  # nothing retired
    assert new_version(versions, doc, "two") == 2
    assert registry.hidden_versions("kb") == [VersionRef("a.md", 1)]

    assert versions.purge() == 0 and store.deleted == []
    wait = versions.next_purge_in()
    assert wait is not None and 25 < wait <= 30

    clock.offset = timedelta(seconds=31)
    assert versions.next_purge_in() == 0.0
    assert versions.purge() == 1
    assert store.deleted == [("kb", "a.md", 1)] and store.flushed == ["kb"]
    assert registry.hidden_versions("kb") == [] and versions.next_purge_in() is None
    assert versions.purge() == 0  # purged once only


def test_grace_zero_purges_everything_retired_now(registry: Registry, tmp_path: Path) -> None:
    store = Store()
    versions = Versions(registry, store, purge_grace_s=30)  # type: ignore[arg-type]
    new_version(versions, tmp_path / "a.md", "one")
    new_version(versions, tmp_path / "a.md", "two")
    assert versions.purge(grace_s=0) == 1 and store.deleted == [("kb", "a.md", 1)]


def test_deleted_documents_are_purged_in_every_knowledge_base(registry: Registry, tmp_path: Path) -> None:
    store, clock = Store(), Clock()
    versions = Versions(registry, store, purge_grace_s=5, clock=clock)  # type: ignore[arg-type]
    new_version(versions, tmp_path / "x.md", "x", kb="hr")
    new_version(versions, tmp_path / "y.md", "y", kb="it")
    assert registry.mark_deleted("hr", "x.md") and registry.mark_deleted("it", "y.md")
    assert registry.hidden_versions("hr") == [VersionRef("x.md", 1)]
    assert versions.purge() == 0
    clock.offset = timedelta(seconds=6)
    assert versions.purge() == 2
    assert sorted(store.deleted) == [("hr", "x.md", 1), ("it", "y.md", 1)]
    assert sorted(store.flushed) == ["hr", "it"]


def test_rollback_deletes_at_once_and_keeps_the_current_version(registry: Registry, tmp_path: Path) -> None:
    store = Store()
    versions = Versions(registry, store, purge_grace_s=60)  # type: ignore[arg-type]
    doc = tmp_path / "a.md"
    new_version(versions, doc, "one")
    doc.write_text("two")
    begun = versions.begin("kb", "a.md", doc, acl_groups=[], tags=[], job_id="job1")
    assert registry.hidden_versions("kb") == [VersionRef("a.md", 2)]  # being indexed: hidden
    versions.rollback("kb", "a.md", begun.version, error="broken", code="corrupt")
    assert store.deleted == [("kb", "a.md", 2)]
    assert registry.hidden_versions("kb") == [] and versions.next_purge_in() is None
    current = registry.current_version("kb", "a.md")
    assert current is not None and current.version == 1
    assert [(v.version, v.status, v.error_code) for v in registry.versions("kb", "a.md")] == [
        (2, "failed", "corrupt"),
        (1, "ready", ""),
    ]


def test_an_identical_file_is_unchanged_but_new_groups_make_a_version(registry: Registry, tmp_path: Path) -> None:
    versions = Versions(registry, Store())  # type: ignore[arg-type]
    doc = tmp_path / "a.md"
    new_version(versions, doc, "same")
    again = versions.begin("kb", "a.md", doc, acl_groups=[], tags=[])
    assert (again.unchanged, again.version, again.chunks) == (True, 1, 3)
    regrouped = versions.begin("kb", "a.md", doc, acl_groups=["hr"], tags=[])
    assert (regrouped.unchanged, regrouped.version) == (False, 2)


def test_a_requeue_fences_out_the_old_worker_and_retires_what_it_left(registry: Registry, tmp_path: Path) -> None:
    store = Store()
    versions = Versions(registry, store)  # type: ignore[arg-type]
    jobs = JobStore(registry)
    job_id = jobs.create("kb", [JobFile(str(tmp_path / n), n) for n in ("a.md", "b.md")], acl_groups=None, tags=None)
    lease = jobs.claim("w1")
    assert lease is not None and lease.job_id == job_id
    for ordinal, name in enumerate(("a.md", "b.md")):
        (tmp_path / name).write_text(name)
        jobs.start_item(lease, ordinal, path=name)
        versions.begin("kb", name, tmp_path / name, acl_groups=[], tags=[], lease=lease)
    taken = jobs.requeue(lease)
    assert taken is not None
    assert sorted(taken.interrupted, key=lambda r: r.doc_id) == [VersionRef("a.md", 1), VersionRef("b.md", 1)]
    assert {v.status for n in ("a.md", "b.md") for v in registry.versions("kb", n)} == {"interrupted"}
    versions.discard("kb", taken.interrupted)
    assert sorted(store.deleted) == [("kb", "a.md", 1), ("kb", "b.md", 1)]
    assert jobs.requeue(lease) is None  # taken back already
    # The old worker wakes up: every write under its old claim is refused.
    with pytest.raises(LostJob):
        versions.publish("kb", "a.md", 1, title="t", pages=None, chunks=1, timings={}, lease=lease)
    with pytest.raises(LostJob):
        versions.begin("kb", "c.md", tmp_path / "a.md", acl_groups=[], tags=[], lease=lease)
    with pytest.raises(LostJob):
        jobs.progress(lease, stage="parsing", pages_done=0, pages_total=0, chunks_done=0, timings={})
    with pytest.raises(LostJob):
        jobs.heartbeat(lease)
    again = jobs.claim("w2")
    assert again is not None and again.token > lease.token


def test_a_publish_is_refused_after_a_delete_or_a_later_version(registry: Registry, tmp_path: Path) -> None:
    versions = Versions(registry, Store())  # type: ignore[arg-type]
    doc = tmp_path / "a.md"
    new_version(versions, doc, "one")
    doc.write_text("two")
    v2 = versions.begin("kb", "a.md", doc, acl_groups=[], tags=[]).version
    doc.write_text("three")
    v3 = versions.begin("kb", "a.md", doc, acl_groups=[], tags=[]).version
    versions.publish("kb", "a.md", v3, title="t", pages=None, chunks=1, timings={})
    with pytest.raises(Superseded):
        versions.publish("kb", "a.md", v2, title="t", pages=None, chunks=1, timings={})
    doc.write_text("four")
    v4 = versions.begin("kb", "a.md", doc, acl_groups=[], tags=[]).version
    assert registry.mark_deleted("kb", "a.md")
    with pytest.raises(DocumentDeletedMeanwhile):
        versions.publish("kb", "a.md", v4, title="t", pages=None, chunks=1, timings={})
    current = registry.document("kb", "a.md")
    assert current is not None and (current.status, current.current_version) == ("deleted", v3)
    # A version begun after the delete brings the document back.
    doc.write_text("five")
    v5 = versions.begin("kb", "a.md", doc, acl_groups=[], tags=[]).version
    versions.publish("kb", "a.md", v5, title="t", pages=None, chunks=1, timings={})
    assert registry.current_version("kb", "a.md").version == v5  # type: ignore[union-attr]


def test_an_id_of_another_origin_is_a_conflict_unless_named(registry: Registry, tmp_path: Path) -> None:
    versions = Versions(registry, Store())  # type: ignore[arg-type]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "policy.md", tmp_path / "b" / "policy.md"
    first.write_text("A's policy")
    second.write_text("B's policy")
    begun = versions.begin("kb", "policy.md", first, acl_groups=[], tags=[], origin=str(first), replace=False)
    versions.publish("kb", "policy.md", begun.version, title="t", pages=None, chunks=1, timings={})
    with pytest.raises(DocIdConflict):
        versions.begin("kb", "policy.md", second, acl_groups=[], tags=[], origin=str(second), replace=False)
    first.write_text("A's policy, revised")  # the same origin updates it
    assert not versions.begin(
        "kb", "policy.md", first, acl_groups=[], tags=[], origin=str(first), replace=False
    ).unchanged
    named = versions.begin("kb", "policy.md", second, acl_groups=[], tags=[], origin=str(second), replace=True)
    assert not named.unchanged


def test_max_attempts_fails_a_file_that_keeps_crashing_its_worker(registry: Registry, tmp_path: Path) -> None:
    jobs = JobStore(registry)
    job_id = jobs.create("kb", [JobFile("bad.tif", "bad.tif"), JobFile("ok.md", "ok.md")], acl_groups=None, tags=None)
    for _ in range(2):
        lease = jobs.claim("w")
        assert lease is not None
        jobs.start_item(lease, 0, path="bad.tif")
        taken = jobs.requeue(lease, max_attempts=2)  # the worker died on bad.tif
        assert taken is not None
    assert taken.crashed == ["bad.tif"]
    view = jobs.get(job_id)
    assert view is not None and view.job.state == "queued"
    assert [(i.status, i.error_code, i.attempts) for i in view.items] == [
        ("failed", "worker_crashed", 2), ("queued", "", 0),
    ]  # fmt: skip
    again = jobs.claim("w")
    assert again is not None and [i.doc_id for i in jobs.claimed_items(again)] == ["ok.md"]


def test_cancel_a_queued_job_at_once_and_a_running_one_by_flag(registry: Registry) -> None:
    jobs = JobStore(registry)
    queued = jobs.create("kb", [JobFile("a.md", "a.md")], acl_groups=None, tags=None)
    assert jobs.cancel(queued) == "cancelled"
    assert jobs.claim("w") is None
    view = jobs.get(queued)
    assert view is not None and [i.status for i in view.items] == ["cancelled"]
    running = jobs.create("kb", [JobFile("b.md", "b.md"), JobFile("c.md", "c.md")], acl_groups=None, tags=None)
    lease = jobs.claim("w")
    assert lease is not None and lease.job_id == running
    assert jobs.start_item(lease, 0, path="b.md") is False
    assert jobs.cancel(running) == "cancelling"
    assert jobs.heartbeat(lease) is True
    jobs.finish_item(lease, 0, status="indexed", version=1, pages=None, chunks=1)
    assert jobs.release(lease) == "cancelled"
    view = jobs.get(running)
    assert view is not None and [i.status for i in view.items] == ["indexed", "cancelled"]
    assert jobs.cancel(running) == "cancelled"
    assert jobs.cancel("0" * 32) is None


def test_a_scheduled_purge_removes_what_is_due_and_says_when_the_rest_comes_due(
    registry: Registry, tmp_path: Path
) -> None:
    store, clock = Store(), Clock()
    versions = Versions(registry, store, purge_grace_s=30, clock=clock)  # type: ignore[arg-type]
    assert versions.purge_scheduled() is None  # nothing retired, nothing to wait for
    new_version(versions, tmp_path / "a.md", "one")
    new_version(versions, tmp_path / "a.md", "two")  # retires a.md v1
    new_version(versions, tmp_path / "b.md", "one")
    assert registry.mark_deleted("kb", "b.md")  # retires b.md v1

    clock.offset = timedelta(seconds=10)
    wait = versions.purge_scheduled()
    assert store.deleted == [] and wait is not None and 15 < wait <= 20
    clock.offset = timedelta(seconds=31)
    assert versions.purge_scheduled() is None  # both were due: nothing left to wait for
    assert sorted(store.deleted) == [("kb", "a.md", 1), ("kb", "b.md", 1)] and store.flushed == ["kb"]
    assert registry.hidden_versions("kb") == []


def test_two_workers_process_every_job_exactly_once(registry: Registry, tmp_path: Path) -> None:
    """20 small jobs, two workers claiming at once (FOR UPDATE SKIP LOCKED on PostgreSQL, one writer at a
    time on SQLite): every file is begun, published and recorded exactly once."""
    store = Store()
    versions = Versions(registry, store)  # type: ignore[arg-type]
    jobs = JobStore(registry)
    ids = []
    for n in range(20):
        path = tmp_path / f"doc{n}.md"
        path.write_text(f"document {n}")
        files = [JobFile(str(path), f"doc{n}.md", origin=str(path))]
        ids.append(jobs.create("kb", files, acl_groups=None, tags=None))
    claimed: dict[str, list[str]] = {"w1": [], "w2": []}
    begun: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(name: str) -> None:
        try:
            start.wait()
            while (lease := jobs.claim(name)) is not None:
                claimed[name].append(lease.job_id)
                for item in jobs.claimed_items(lease):
                    jobs.start_item(lease, item.ordinal, path=item.path)
                    b = versions.begin("kb", item.doc_id, Path(item.path), acl_groups=[], tags=[], lease=lease,
                                       origin=item.origin, replace=False)  # fmt: skip
                    begun.append(item.doc_id)
                    versions.publish("kb", item.doc_id, b.version, title="t", pages=None, chunks=1, timings={},
                                     lease=lease)  # fmt: skip
                    jobs.finish_item(lease, item.ordinal, status="indexed", version=b.version, pages=None, chunks=1)
                jobs.release(lease)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(claimed["w1"] + claimed["w2"]) == sorted(ids)  # each job claimed once
    assert sorted(begun) == sorted(f"doc{n}.md" for n in range(20))  # each file begun once
    for n in range(20):
        assert [(v.version, v.status) for v in registry.versions("kb", f"doc{n}.md")] == [(1, "ready")]
    for job_id in ids:
        view = jobs.get(job_id)
        assert view is not None and view.job.state == "done" and view.job.attempts == 1


def test_two_workers_share_one_big_job_and_each_file_is_done_exactly_once(registry: Registry, tmp_path: Path) -> None:
    """One job of 50 files, two workers claiming three files at a time: both get a share, every file is
    begun, published and recorded once, and the job is closed once, when its last file finishes."""
    store = Store()
    versions = Versions(registry, store)  # type: ignore[arg-type]
    jobs = JobStore(registry, claim_files=3)
    files = []
    for n in range(50):
        path = tmp_path / f"doc{n}.md"
        path.write_text(f"document {n}")
        files.append(JobFile(str(path), f"doc{n}.md", origin=str(path)))
    job_id = jobs.create("kb", files, acl_groups=None, tags=None)
    done: dict[str, list[str]] = {"w1": [], "w2": []}
    closed: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(name: str) -> None:
        try:
            start.wait()
            while (lease := jobs.claim(name, job_id=job_id)) is not None:
                for item in jobs.claimed_items(lease):
                    jobs.start_item(lease, item.ordinal, path=item.path)
                    b = versions.begin("kb", item.doc_id, Path(item.path), acl_groups=[], tags=[], lease=lease)
                    versions.publish("kb", item.doc_id, b.version, title="t", pages=None, chunks=2, timings={},
                                     lease=lease)  # fmt: skip
                    jobs.finish_item(lease, item.ordinal, status="indexed", version=b.version, pages=1, chunks=2)
                    done[name].append(item.doc_id)
                    time.sleep(0.002)  # let the other worker in
                if jobs.release(lease) == "done":
                    closed.append(name)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in done]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert done["w1"] and done["w2"], done  # the job was shared
    assert sorted(done["w1"] + done["w2"]) == sorted(f.doc_id for f in files)  # each file once
    for f in files:
        assert [(v.version, v.status) for v in registry.versions("kb", f.doc_id)] == [(1, "ready")]
    view = jobs.get(job_id)
    assert view is not None and view.job.state == "done" and view.job.attempts == 1
    assert (view.job.files_done, view.job.files_failed, view.job.chunks_done, view.job.pages_done) == (50, 0, 100, 50)
    assert {i.worker for i in view.items} == {"w1", "w2"}
    assert len(closed) >= 1  # every release after the close sees it done; the close itself happened once
    assert view.job.finished_at is not None


def test_requeueing_one_workers_claim_leaves_the_other_workers_claim_alone(registry: Registry, tmp_path: Path) -> None:
    store = Store()
    versions = Versions(registry, store)  # type: ignore[arg-type]
    jobs = JobStore(registry, claim_files=1)
    names = ("a.md", "b.md", "c.md")
    for name in names:
        (tmp_path / name).write_text(name)
    job_id = jobs.create("kb", [JobFile(str(tmp_path / n), n) for n in names], acl_groups=None, tags=None)
    dead, alive = jobs.claim("dead", files=1), jobs.claim("alive", files=1)
    assert dead is not None and alive is not None and dead.token != alive.token
    for lease, ordinal, name in ((dead, 0, "a.md"), (alive, 1, "b.md")):
        jobs.start_item(lease, ordinal, path=name)
        versions.begin("kb", name, tmp_path / name, acl_groups=[], tags=[], lease=lease)
    taken = jobs.requeue(dead)
    assert taken is not None and taken.interrupted == [VersionRef("a.md", 1)]
    view = jobs.get(job_id)
    assert view is not None and view.job.state == "running"  # the other claim still runs it
    assert [i.status for i in view.items] == ["queued", "running", "queued"]
    versions.publish("kb", "b.md", 1, title="t", pages=None, chunks=1, timings={}, lease=alive)
    jobs.finish_item(alive, 1, status="indexed", version=1, pages=None, chunks=1)
    with pytest.raises(LostJob):
        jobs.finish_item(dead, 0, status="indexed", version=1, pages=None, chunks=1)
    assert jobs.release(alive) == "running"
    rest = [jobs.claim("alive", job_id=job_id), jobs.claim("alive", job_id=job_id)]
    assert all(lease is not None for lease in rest) and jobs.claim("alive") is None
    for lease in rest:
        assert lease is not None
        (item,) = jobs.claimed_items(lease)
        jobs.finish_item(lease, item.ordinal, status="unchanged", version=0, pages=None, chunks=0)
    final = jobs.get(job_id)
    assert final is not None and final.job.state == "done"
    assert [i.status for i in final.items] == ["unchanged", "indexed", "unchanged"]


def test_claims_take_a_share_of_what_is_left_per_live_worker(registry: Registry) -> None:
    jobs = JobStore(registry, claim_files=2)
    job_id = jobs.create("kb", [JobFile(f"/in/{n}.md", f"{n}.md") for n in range(40)], acl_groups=None, tags=None)
    jobs.worker_beat("host:1")
    jobs.worker_beat("host:2")
    sizes = []
    while (lease := jobs.claim("host:1", job_id=job_id)) is not None:
        sizes.append(len(jobs.claimed_items(lease)))
    # Half of what is left per live worker, never below claim_files: big first, small at the end.
    assert sizes == [10, 8, 6, 4, 3, 3, 2, 2, 2]
    assert jobs.claim("host:1", job_id=job_id, files=1) is None
