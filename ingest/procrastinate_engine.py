"""Scale-out ingestion on procrastinate, a task engine on the registry's PostgreSQL (KB_INGEST__ENGINE=procrastinate).

procrastinate delivers the work; kb's claims stay the truth of who may write what:

- A job's files are delivered in batches: the transaction that queues a kb job also defers one procrastinate
  job (`kb.ingest`, queue `kb_ingest`) per `claim_files` files, so a job is queued with its deliveries or
  not at all. A delivery claims the next unclaimed files of its kb job (`JobStore.claim`, a claim with
  its own fencing token) and runs them through the same `JobWorker` code as the embedded loop: per-file
  starts, progress and results, heartbeats, cancellation between files, and LostJob when the claim was
  taken away. Which files a delivery gets is decided by the claim, not by the delivery, so a delivery run
  twice (a retry) or one too many never runs a file twice.
- Workers wake on LISTEN/NOTIFY (procrastinate's trigger on insert) rather than polling.
- A worker that dies: kb finds its claims by a dead PID (same host) or a stale claim heartbeat, fences
  them out, rolls back what they had begun and queues their files again (`JobWorker.recover`, the same as
  the embedded engine); procrastinate finds the delivery it was running by the worker's stale heartbeat
  and retries it. Every worker sweeps for both every few seconds, and defers one more delivery for a job
  whose files are unclaimed while no delivery of it waits (files handed back after the deliveries ran).
- The sweep also purges retired versions when due and finishes access changes left part-way, which the
  embedded loop does on each poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time

from procrastinate import App, PsycopgConnector, RetryStrategy, SyncPsycopgConnector
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.schema import SchemaManager
from procrastinate.types import JSONDict
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from ingest.jobs import JobStore
from ingest.registry import Registry
from ingest.worker import JobWorker

log = logging.getLogger(__name__)

TASK = "kb.ingest"
QUEUE = "kb_ingest"
READY = "ready: procrastinate worker on queue"
# The advisory lock that serialises concurrent first starts applying the schema (a fixed 64-bit key).
_SCHEMA_LOCK = 0x6B62_5F70_726F_63


def conninfo(database_url: str) -> str:
    """The libpq URL of the registry's SQLAlchemy URL (postgresql+psycopg://… → postgresql://…)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError(f"procrastinate needs PostgreSQL, not {url.get_backend_name()}")
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def registry_conninfo(registry: Registry) -> str:
    return conninfo(registry.engine.url.render_as_string(hide_password=False))


def apply_schema(database_url: str) -> bool:
    """Create procrastinate's tables, types and functions unless they are there; True when this call did.
    Processes that start together serialise on an advisory lock, so exactly one creates them."""
    import psycopg

    with psycopg.connect(conninfo(database_url)) as conn:  # one transaction, committed on leaving
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL").fetchone()
        if row is not None and row[0]:
            return False
        # Without parameters psycopg sends the script as is (several statements, '%' in its messages).
        conn.execute(SchemaManager.get_schema())
    log.info("applied procrastinate's schema to the registry database")
    return True


class Deliveries:
    """The deferring side (API, CLI, workers' sweeps): procrastinate jobs that deliver a kb job's files,
    deferred on the caller's own database transaction."""

    def __init__(self, registry: Registry, *, claim_files: int) -> None:
        self._registry = registry
        self._claim_files = claim_files
        # Never opened: every defer runs on a connection of the registry's transaction.
        self._app = App(connector=SyncPsycopgConnector(conninfo=registry_conninfo(registry)))

    def batches(self, files: int) -> int:
        return math.ceil(files / self._claim_files) if files > 0 else 0

    def __call__(self, session: Session, job_id: str, files: int) -> None:
        """Defer one delivery per batch of the new job's files, in `session`'s transaction (JobStore.create)."""
        count = self.batches(files)
        if count:
            deferrer = self._app.configure_task(TASK, queue=QUEUE, connection=_driver(session))
            args: JSONDict = {"job_id": job_id}
            deferrer.batch_defer(*[args] * count)

    def redeliver(self, job_id: str) -> bool:
        """One more delivery for a job with unclaimed files, unless one of its deliveries waits already;
        True when one was deferred. Sweeps of several workers at once defer one (a queueing lock)."""
        with self._registry.session() as session:
            waiting = session.scalar(
                text(
                    "SELECT count(*) FROM procrastinate_jobs "
                    "WHERE task_name = :task AND status = 'todo' AND args->>'job_id' = :job_id"
                ),
                {"task": TASK, "job_id": job_id},
            )
            if waiting:
                return False
            try:
                with session.begin_nested():  # a lost race aborts the savepoint, not the transaction
                    self._app.configure_task(
                        TASK, queue=QUEUE, connection=_driver(session), queueing_lock=f"kb-redeliver:{job_id}"
                    ).defer(job_id=job_id)
            except AlreadyEnqueued:
                return False
        log.info("job %s: files handed back with no delivery waiting; deferred one more", job_id)
        return True


def _driver(session: Session) -> object:
    """The psycopg connection under the session's transaction."""
    return session.connection().connection.driver_connection


class ProcrastinateWorker:
    """A procrastinate worker that runs kb's deliveries, and the sweep beside it."""

    def __init__(
        self, *, worker: JobWorker, jobs: JobStore, registry: Registry, deliveries: Deliveries, claim_files: int,
        concurrency: int = 1, stale_after_s: float = 60.0, sweep_every_s: float = 2.0,
    ) -> None:  # fmt: skip
        self._worker = worker
        self._jobs = jobs
        self._registry = registry
        self._deliveries = deliveries
        self._claim_files = claim_files
        self._concurrency = concurrency
        self._sweep_every = sweep_every_s
        # procrastinate's worker heartbeat and stall timeout, inside kb's claim timeout: a dead worker's
        # delivery is retried about when kb takes its claim back.
        self._beat_s = max(1.0, stale_after_s / 6)
        self._stalled_s = max(3.0, stale_after_s / 2)
        self.deliveries_run = 0

    def app(self) -> App:
        app = App(connector=PsycopgConnector(conninfo=registry_conninfo(self._registry)))

        # A delivery that failed before it claimed (the database went away) is retried; once it holds a
        # claim, kb's recovery takes over whatever it leaves.
        @app.task(name=TASK, queue=QUEUE, retry=RetryStrategy(max_attempts=3, wait=2))
        def deliver(job_id: str) -> None:
            if self._worker.run_delivery(job_id, files=self._claim_files):
                self.deliveries_run += 1

        return app

    def run(
        self, stop: threading.Event | None = None, *, until_idle: bool = False, signal_handlers: bool = False
    ) -> int:
        """Run deliveries until `stop` is set (or a signal, with `signal_handlers`), or with `until_idle`
        until none is waiting and no purge is pending; the deliveries run."""
        apply_schema(registry_conninfo(self._registry))
        asyncio.run(self._main(stop or threading.Event(), until_idle=until_idle, signal_handlers=signal_handlers))
        if until_idle:
            while (due := self._worker.purge_due()) is not None and not (stop and stop.is_set()):
                time.sleep(max(due, 0.05))
        return self.deliveries_run

    async def _main(self, stop: threading.Event, *, until_idle: bool, signal_handlers: bool) -> None:
        app = self.app()
        name = self._worker.name
        async with app.open_async():
            await asyncio.to_thread(self.sweep)  # what a worker that died left, before new work
            sweeper = asyncio.create_task(self._sweep_forever(app))
            worker = asyncio.create_task(
                app.run_worker_async(
                    queues=[QUEUE], name=name, concurrency=self._concurrency, wait=not until_idle,
                    install_signal_handlers=signal_handlers, update_heartbeat_interval=self._beat_s,
                    stalled_worker_timeout=self._stalled_s, fetch_job_polling_interval=max(self._beat_s, 5.0),
                )
            )  # fmt: skip
            stopper = asyncio.create_task(_wait_for(stop))
            log.info("worker %s %s %s (%d at a time)", name, READY, QUEUE, self._concurrency)
            try:
                await asyncio.wait({worker, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not worker.done():
                    worker.cancel()  # procrastinate stops gracefully: the deliveries under way finish
                with contextlib.suppress(asyncio.CancelledError):
                    await worker
            finally:
                for task in (sweeper, stopper):
                    task.cancel()
                self._jobs.worker_gone(name)

    async def _sweep_forever(self, app: App) -> None:
        while True:
            await asyncio.sleep(self._sweep_every)
            try:
                await asyncio.to_thread(self.sweep)
                await self.retry_stalled(app)
            except Exception:  # a database that is down now is swept at the next round
                log.warning("the ingestion sweep failed", exc_info=True)

    def sweep(self) -> None:
        """This worker is alive; claims of dead workers are taken back (fenced, rolled back, files queued
        again); jobs with unclaimed files and no waiting delivery get one; purges and access repairs that
        are due are done."""
        self._jobs.worker_beat(self._worker.name)
        self._worker.recover()
        for job_id in self._jobs.unclaimed():
            self._deliveries.redeliver(job_id)
        self._worker.repair_access()
        self._worker.purge_due()

    async def retry_stalled(self, app: App) -> int:
        """Deliveries that were running on a worker whose procrastinate heartbeat stopped go back to the
        queue; the number retried."""
        retried = 0
        stalled = await app.job_manager.get_stalled_jobs(task_name=TASK, seconds_since_heartbeat=self._stalled_s)
        for job in stalled:
            try:
                await app.job_manager.retry_job(job)
            except Exception:  # another worker's sweep retried it first, or it finished meanwhile
                log.debug("delivery %s: not retried", job.id, exc_info=True)
                continue
            log.warning("delivery %s of job %s: its worker stopped; retried", job.id, job.task_kwargs.get("job_id"))
            retried += 1
        return retried


async def _wait_for(event: threading.Event) -> None:
    while not event.is_set():
        await asyncio.sleep(0.2)
