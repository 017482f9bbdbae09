"""JobWorker: takes queued ingestion jobs from the SQL queue and runs them through the IngestPipeline."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from ingest.jobs import JobStore, worker_name
from ingest.pipeline import FileTask, IngestPipeline, IngestResult, Progress
from ingest.sources import ArchiveLimits

log = logging.getLogger(__name__)


class JobWorker:
    def __init__(
        self,
        *,
        jobs: JobStore,
        pipeline: IngestPipeline,
        uploads_dir: Path,
        archive_limits: ArchiveLimits = ArchiveLimits(),
        poll_s: float = 1.0,
        heartbeat_s: float = 5.0,
        progress_every_s: float = 0.5,
    ) -> None:
        self._progress_every = progress_every_s
        self._jobs = jobs
        self._pipeline = pipeline
        self.uploads_dir = uploads_dir
        self.archive_limits = archive_limits
        self._poll = poll_s
        self._beat = heartbeat_s
        self.name = worker_name()

    def recover(self) -> int:
        """Roll back what dead workers left half-done and queue their jobs again."""
        recovered = 0
        for job_id in self._jobs.abandoned():
            view = self._jobs.get(job_id)
            assert view is not None
            for ref in self._pipeline.unfinished_versions(job_id):
                log.warning("job %s: rolling back %s v%d left by a stopped worker", job_id, ref.doc_id, ref.version)
                self._pipeline.rollback(
                    view.job.kb, ref.doc_id, ref.version, error="interrupted: the worker stopped mid-file; retried",
                    code="interrupted", status="interrupted",
                )  # fmt: skip
            self._jobs.requeue(job_id)
            recovered += 1
        return recovered

    def run(self, stop: threading.Event | None = None, *, until_idle: bool = False) -> int:
        """Work until `stop` is set (or, with `until_idle`, until the queue is empty). Returns jobs run."""
        stop = stop or threading.Event()
        done = 0
        self.recover()
        try:
            while not stop.is_set():
                self._jobs.worker_beat(self.name)
                job_id = self._jobs.claim(self.name)
                if job_id is None:
                    if until_idle:
                        break
                    stop.wait(self._poll)
                    self.recover()
                    continue
                self.run_job(job_id)
                done += 1
        finally:
            self._jobs.worker_gone(self.name)
        return done

    def run_job(self, job_id: str) -> None:
        view = self._jobs.get(job_id)
        assert view is not None
        job = view.job
        beating = threading.Event()
        beater = threading.Thread(target=self._heartbeat, args=(job_id, beating), daemon=True)
        beater.start()
        results = []
        try:
            tasks = [
                FileTask(path=Path(i.path), doc_id=i.doc_id, key=i.ordinal) for i in self._jobs.pending_items(job_id)
            ]

            def started(task: FileTask) -> None:
                self._jobs.start_item(job_id, task.key, path=str(task.path))

            last_report = [0.0]

            def report(_task: FileTask, p: Progress) -> None:
                # The pipeline reports several times per batch; one database write per interval is plenty
                # for a progress bar, and each write recounts the job's finished files.
                moment = time.monotonic()
                if moment - last_report[0] < self._progress_every:
                    return
                last_report[0] = moment
                self._jobs.progress(
                    job_id, stage=p.stage, pages_done=p.pages_done, pages_total=p.pages_total,
                    chunks_done=p.chunks_done, timings=p.timings,
                )  # fmt: skip

            def finished(task: FileTask, r: IngestResult) -> None:
                self._jobs.finish_item(
                    job_id, task.key, status=r.status, version=r.version, pages=r.pages, chunks=r.chunks,
                    error=r.error, error_code=r.error_code, timings=r.timings,
                )  # fmt: skip

            results = self._pipeline.ingest_many(
                tasks, kb=job.kb, acl_groups=job.acl_groups, tags=job.tags, job_id=job_id,
                on_start=started, on_progress=report, on_result=finished,
            )  # fmt: skip
            indexed = any(r.status == "indexed" for r in results)
            if indexed:
                time.sleep(self._pipeline.purge_grace_s)
                self._pipeline.purge(job.kb)
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
            except Exception:
                log.warning("heartbeat for job %s failed", job_id, exc_info=True)
