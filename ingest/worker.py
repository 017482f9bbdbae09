"""JobWorker: claims the files of queued ingestion jobs from a WorkQueue (ingest/queue.py; the SQL one in
ingest/jobs.py by default), a few at a time, runs them through the IngestPipeline,
purges retired versions when their grace period has passed, and finishes access changes (new groups or
tags of a document) that a process left part-way.

The worker is the one process that always runs while kb ingests (the API's thread, `kb jobs work`, or the
background worker `kb ingest` starts), so the purge schedule lives in its loop: every poll deletes what
is due, and a worker told to stop when idle first waits for what is still to come due.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from core.tracing import tracer
from ingest.access import DocumentAccess
from ingest.events import FileFinished, FileProgress, FileStarted, FileTask, Progress
from ingest.jobs import JobItemRow, Lease, worker_name
from ingest.pipeline import IngestPipeline
from ingest.queue import WorkQueue
from ingest.registry import LostJob
from ingest.versions import Versions

log = logging.getLogger(__name__)


class JobWorker:
    def __init__(
        self,
        *,
        jobs: WorkQueue,
        pipeline: IngestPipeline,
        versions: Versions,
        uploads_dir: Path,
        access: DocumentAccess | None = None,
        poll_s: float = 1.0,
        heartbeat_s: float = 5.0,
        progress_every_s: float = 0.5,
        max_attempts: int = 2,
    ) -> None:
        self._jobs = jobs
        self._pipeline = pipeline
        self._versions = versions
        self._access = access
        self.uploads_dir = uploads_dir
        self._poll = poll_s
        self._beat = heartbeat_s
        self._progress_every = progress_every_s
        self._max_attempts = max_attempts
        self.name = worker_name()
        self._purge_at = 0.0  # monotonic time of the next purge a running job should do

    def recover(self) -> int:
        """Take back the claims of workers that died or stalled: fence them out, roll back what they left
        half-done, and queue their files again. Returns the claims taken back."""
        recovered = 0
        for lease in self._jobs.abandoned():
            taken = self._jobs.requeue(lease, max_attempts=self._max_attempts)
            if taken is None:
                continue  # another worker took it back first
            for crashed in taken.crashed:
                log.error("job %s: %s crashed its worker %d times; failed", lease.job_id, crashed, self._max_attempts)
            for ref in taken.interrupted:
                log.warning(
                    "job %s: rolling back %s v%d left by a stopped worker", lease.job_id, ref.doc_id, ref.version
                )
            try:
                self._versions.discard(taken.kb, taken.interrupted)
            except Exception:  # retired already: the purge schedule deletes them if this fails
                log.warning("job %s: could not delete the chunks it left", lease.job_id, exc_info=True)
            if self._jobs.finished(lease.job_id):  # its last files crashed out: nobody else will clean up
                shutil.rmtree(self.uploads_dir / lease.job_id, ignore_errors=True)
            recovered += 1
        return recovered

    def run(self, stop: threading.Event | None = None, *, until_idle: bool = False) -> int:
        """Work until `stop` is set, or with `until_idle` until no job is queued and no purge is pending.
        Returns the number of jobs run."""
        stop = stop or threading.Event()
        done = 0
        self.recover()
        log.info("worker %s ready: polling the job queue", self.name)
        try:
            while not stop.is_set():
                self._jobs.worker_beat(self.name)
                self.repair_access()
                due_in = self.purge_due()
                lease = self._jobs.claim(self.name)
                if lease is not None:
                    self.run_job(lease)
                    done += 1
                    continue
                if until_idle and due_in is None:
                    break
                # Wake for the next poll, or sooner when a retired version comes due.
                stop.wait(self._poll if due_in is None else min(self._poll, max(due_in, 0.05)))
                self.recover()
        finally:
            self._jobs.worker_gone(self.name)
        return done

    def repair_access(self) -> int:
        """Finish access changes a process left part-way (their documents are hidden until then)."""
        if self._access is None:
            return 0
        try:
            return self._access.repair()
        except Exception:  # a registry that is busy now is retried at the next poll
            log.warning("repairing access changes failed", exc_info=True)
            return 0

    def purge_due(self) -> float | None:
        """Purge what is due in every knowledge base; seconds until the next purge (None: nothing waits)."""
        try:
            due_in = self._versions.purge_scheduled()
        except Exception:  # a store that is down now is retried at the next poll
            log.warning("purging retired versions failed", exc_info=True)
            return None
        # Nothing retired: look again when the next file finishes (it may have replaced something).
        self._purge_at = 0.0 if due_in is None else time.monotonic() + max(due_in, 0.05)
        return due_in

    def run_job(self, lease: Lease) -> None:
        """Work on a claimed job until no file of it is left to claim: this claim's files, then the next few
        of the same job, and so on. Other workers claim files of the same job meanwhile; whichever finishes
        its last file closes it. On a lost claim (another worker took it over) stop at once, leaving no
        chunks of what this worker had not published."""
        view = self._jobs.get(lease.job_id)
        assert view is not None
        with tracer.start_as_current_span("ingest job", attributes={"kb.job_id": lease.job_id, "kb.kb": view.job.kb}):
            held: Lease | None = lease
            while held is not None:
                if not self._run_claim(held, kb=view.job.kb, acl_groups=view.job.acl_groups, tags=view.job.tags):
                    break
                held = self._jobs.claim(self.name, job_id=lease.job_id)
        if self._jobs.finished(lease.job_id):
            shutil.rmtree(self.uploads_dir / lease.job_id, ignore_errors=True)

    def run_delivery(self, job_id: str, *, files: int) -> bool:
        """One delivery of a task engine: claim the next `files` unclaimed files of the job and run them
        (the same claim, heartbeat and fencing as `run_job`, but one claim only: the engine delivers the
        next batch). False when nothing was left to claim (other deliveries took it, or it is closed)."""
        lease = self._jobs.claim(self.name, job_id=job_id, files=files)
        if lease is None:
            return False
        view = self._jobs.get(job_id)
        assert view is not None
        with tracer.start_as_current_span("ingest job", attributes={"kb.job_id": job_id, "kb.kb": view.job.kb}):
            self._run_claim(lease, kb=view.job.kb, acl_groups=view.job.acl_groups, tags=view.job.tags)
        if self._jobs.finished(job_id):
            shutil.rmtree(self.uploads_dir / job_id, ignore_errors=True)
        return True

    def _run_claim(self, lease: Lease, *, kb: str, acl_groups: list[str] | None, tags: list[str] | None) -> bool:
        """Run the files of one claim and release it; False when the claim was lost."""
        signals = _Signals()
        beater = threading.Thread(target=self._heartbeat, args=(lease, signals), daemon=True)
        beater.start()
        try:
            while not signals.cancel.is_set():
                pending = self._jobs.claimed_items(lease)
                if not pending:
                    break
                try:
                    self._run_items(lease, pending, kb=kb, acl_groups=acl_groups, tags=tags, signals=signals)
                except LostJob:
                    raise
                except Exception as exc:
                    log.exception("job %s: ingestion broke off", lease.job_id)
                    self._fail_running(lease, pending, exc)
            if self._jobs.release(lease) == "cancelled":
                log.info("job %s cancelled", lease.job_id)
                return False
        except LostJob as exc:
            log.warning(
                "job %s: claim %d lost to another worker (%s); stopped, own unpublished chunks removed",
                lease.job_id, lease.token, exc,
            )  # fmt: skip
            return False
        finally:
            signals.stop.set()
            beater.join(timeout=5)
        return True

    def _run_items(
        self, lease: Lease, items: list[JobItemRow], *, kb: str, acl_groups: list[str] | None,
        tags: list[str] | None, signals: _Signals,
    ) -> None:  # fmt: skip
        tasks = [
            FileTask(path=Path(i.path), doc_id=i.doc_id, key=i.ordinal, origin=i.origin, replace=i.replace)
            for i in items
        ]
        progress = _JobProgress(self._jobs, lease, every_s=self._progress_every)
        events = self._pipeline.run(tasks, kb=kb, acl_groups=acl_groups, tags=tags, lease=lease)
        try:
            for event in events:
                if signals.lost.is_set():
                    raise LostJob(f"job {lease.job_id}: the heartbeat found it taken over")
                if isinstance(event, FileStarted):
                    if self._jobs.start_item(lease, event.task.key, path=str(event.task.path)):
                        signals.cancel.set()
                elif isinstance(event, FileProgress):
                    if progress.update(event.task, event.progress):
                        signals.cancel.set()
                elif isinstance(event, FileFinished):
                    progress.finished(event.task)
                    r = event.result
                    self._jobs.finish_item(
                        lease, event.task.key, status=r.status, version=r.version, pages=r.pages, chunks=r.chunks,
                        error=r.error, error_code=r.error_code, timings=r.timings,
                    )  # fmt: skip
                    # A long job purges as it goes: what it replaced leaves the store once its grace passed.
                    if time.monotonic() >= self._purge_at:
                        self.purge_due()
                if signals.cancel.is_set():
                    break  # closing the run rolls back the file under way
        finally:
            events.close()  # type: ignore[attr-defined]

    def _fail_running(self, lease: Lease, items: list[JobItemRow], exc: Exception) -> None:
        """After the run broke off: fail the files that were under way (or, if none had started, the
        first one), so the next pass goes on after them rather than hitting the same wall."""
        fresh = {i.ordinal: i for i in self._jobs.claimed_items(lease)}
        running = [o for o, i in fresh.items() if i.status == "running"] or [items[0].ordinal]
        for ordinal in running:
            if ordinal in fresh:
                self._jobs.finish_item(
                    lease, ordinal, status="failed", version=0, pages=None, chunks=0,
                    error=f"{type(exc).__name__}: {exc}", error_code="internal_error",
                )  # fmt: skip

    def _heartbeat(self, lease: Lease, signals: _Signals) -> None:
        # Parsing one batch of scanned pages can take minutes; the job must not look abandoned meanwhile.
        while not signals.stop.wait(self._beat):
            try:
                if self._jobs.heartbeat(lease):
                    signals.cancel.set()
                self._jobs.worker_beat(self.name)
            except LostJob:
                signals.lost.set()
                return
            except Exception:  # a missed beat is retried; the job goes on
                log.warning("heartbeat for job %s failed", lease.job_id, exc_info=True)


class _Signals:
    """What the heartbeat thread tells the worker's loop: cancel between files, or stop (job lost)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.cancel = threading.Event()
        self.lost = threading.Event()


class _JobProgress:
    """The job's progress row from the files under way (consecutive files share batches, so more than one
    can be), written at most once per interval: the pipeline reports several times per batch, a progress
    bar needs far fewer, and each write recounts the job's finished files."""

    def __init__(self, jobs: WorkQueue, lease: Lease, *, every_s: float) -> None:
        self._jobs = jobs
        self._lease = lease
        self._every = every_s
        self._last = 0.0
        self._under_way: dict[int, Progress] = {}

    def update(self, task: FileTask, progress: Progress) -> bool:
        """Record progress (at most once per interval); True when the job is to be cancelled."""
        self._under_way[task.key] = progress
        moment = time.monotonic()
        if moment - self._last < self._every:
            return False
        self._last = moment
        live = self._under_way.values()
        timings: dict[str, float] = {}
        for p in live:
            for key, ms in p.timings.items():
                timings[key] = timings.get(key, 0.0) + ms
        return self._jobs.progress(
            self._lease, stage=progress.stage, pages_done=sum(p.pages_done for p in live),
            pages_total=sum(p.pages_total for p in live), chunks_done=sum(p.chunks_done for p in live),
            timings=timings,
        )  # fmt: skip

    def finished(self, task: FileTask) -> None:
        self._under_way.pop(task.key, None)
