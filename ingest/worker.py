"""JobWorker: takes queued ingestion jobs from the SQL queue, runs them through the IngestPipeline,
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

from ingest.access import DocumentAccess
from ingest.events import FileFinished, FileProgress, FileStarted, FileTask, Progress
from ingest.jobs import JobStore, worker_name
from ingest.pipeline import IngestPipeline
from ingest.versions import Versions

log = logging.getLogger(__name__)


class JobWorker:
    def __init__(
        self,
        *,
        jobs: JobStore,
        pipeline: IngestPipeline,
        versions: Versions,
        uploads_dir: Path,
        access: DocumentAccess | None = None,
        poll_s: float = 1.0,
        heartbeat_s: float = 5.0,
        progress_every_s: float = 0.5,
    ) -> None:
        self._jobs = jobs
        self._pipeline = pipeline
        self._versions = versions
        self._access = access
        self.uploads_dir = uploads_dir
        self._poll = poll_s
        self._beat = heartbeat_s
        self._progress_every = progress_every_s
        self.name = worker_name()

    def recover(self) -> int:
        """Roll back what dead workers left half-done and queue their jobs again."""
        recovered = 0
        for job_id in self._jobs.abandoned():
            view = self._jobs.get(job_id)
            assert view is not None
            refs = self._versions.rollback_job(
                view.job.kb, job_id, error="interrupted: the worker stopped mid-file; retried"
            )
            for ref in refs:
                log.warning("job %s: rolled back %s v%d left by a stopped worker", job_id, ref.doc_id, ref.version)
            self._jobs.requeue(job_id)
            recovered += 1
        return recovered

    def run(self, stop: threading.Event | None = None, *, until_idle: bool = False) -> int:
        """Work until `stop` is set, or with `until_idle` until no job is queued and no purge is pending.
        Returns the number of jobs run."""
        stop = stop or threading.Event()
        done = 0
        self.recover()
        try:
            while not stop.is_set():
                self._jobs.worker_beat(self.name)
                self.repair_access()
                due_in = self.purge_due()
                job_id = self._jobs.claim(self.name)
                if job_id is not None:
                    self.run_job(job_id)
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
            return self._versions.purge_scheduled()
        except Exception:  # a store that is down now is retried at the next poll
            log.warning("purging retired versions failed", exc_info=True)
            return None

    def run_job(self, job_id: str) -> None:
        view = self._jobs.get(job_id)
        assert view is not None
        job = view.job
        beating = threading.Event()
        beater = threading.Thread(target=self._heartbeat, args=(job_id, beating), daemon=True)
        beater.start()
        try:
            tasks = [
                FileTask(path=Path(i.path), doc_id=i.doc_id, key=i.ordinal) for i in self._jobs.pending_items(job_id)
            ]
            progress = _JobProgress(self._jobs, job_id, every_s=self._progress_every)
            events = self._pipeline.run(tasks, kb=job.kb, acl_groups=job.acl_groups, tags=job.tags, job_id=job_id)
            for event in events:
                if isinstance(event, FileStarted):
                    self._jobs.start_item(job_id, event.task.key, path=str(event.task.path))
                elif isinstance(event, FileProgress):
                    progress.update(event.task, event.progress)
                elif isinstance(event, FileFinished):
                    progress.finished(event.task)
                    r = event.result
                    self._jobs.finish_item(
                        job_id, event.task.key, status=r.status, version=r.version, pages=r.pages, chunks=r.chunks,
                        error=r.error, error_code=r.error_code, timings=r.timings,
                    )  # fmt: skip
            self._jobs.finish(job_id)
        finally:
            beating.set()
            beater.join(timeout=5)
        shutil.rmtree(self.uploads_dir / job_id, ignore_errors=True)

    def _heartbeat(self, job_id: str, stop: threading.Event) -> None:
        # Parsing one batch of scanned pages can take minutes; the job must not look abandoned meanwhile.
        while not stop.wait(self._beat):
            try:
                self._jobs.heartbeat(job_id)
                self._jobs.worker_beat(self.name)
            except Exception:  # a missed beat is retried; the job goes on
                log.warning("heartbeat for job %s failed", job_id, exc_info=True)


class _JobProgress:
    """The job's progress row from the files under way (consecutive files share batches, so more than one
    can be), written at most once per interval: the pipeline reports several times per batch, a progress
    bar needs far fewer, and each write recounts the job's finished files."""

    def __init__(self, jobs: JobStore, job_id: str, *, every_s: float) -> None:
        self._jobs = jobs
        self._job_id = job_id
        self._every = every_s
        self._last = 0.0
        self._under_way: dict[int, Progress] = {}

    def update(self, task: FileTask, progress: Progress) -> None:
        self._under_way[task.key] = progress
        moment = time.monotonic()
        if moment - self._last < self._every:
            return
        self._last = moment
        live = self._under_way.values()
        timings: dict[str, float] = {}
        for p in live:
            for key, ms in p.timings.items():
                timings[key] = timings.get(key, 0.0) + ms
        self._jobs.progress(
            self._job_id, stage=progress.stage, pages_done=sum(p.pages_done for p in live),
            pages_total=sum(p.pages_total for p in live), chunks_done=sum(p.chunks_done for p in live),
            timings=timings,
        )  # fmt: skip

    def finished(self, task: FileTask) -> None:
        self._under_way.pop(task.key, None)
