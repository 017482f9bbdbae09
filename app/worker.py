"""The ingestion worker's entry points, one for every way kb runs it.

- the API runs `run_worker` in a thread while it serves, under a `WorkerSupervisor` that starts it again
  if it dies (and tells /readyz whether it is up);
- `kb worker` (alias `kb jobs work`) and `kb ingest --wait` (when no worker is alive) run it in the CLI's
  own process; any number of `kb worker` processes, on any number of machines, share the queue file by
  file (ingest/jobs.py). With KB_INGEST__ENGINE=procrastinate each runs a procrastinate worker instead of
  kb's polling loop (ingest/procrastinate_engine.py);
- `kb ingest` and `kb docs delete` (when no worker is alive) start `python -m app.worker --until-idle`
  detached, so that the job still completes, and retired chunks are still purged, after the CLI exits.
  It logs to $KB_HOME/logs/worker.log.

Every poll also finishes access changes (`kb docs set-acl`) left part-way by a process that died or a
store that failed: their documents stay hidden until then.

A worker started "until idle" leaves when no job is queued and no retired version waits for its purge.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from app.settings import Settings
from ingest.jobs import worker_name

if TYPE_CHECKING:
    # Imported when a worker is built, not when the CLI starts: it pulls in the models' libraries.
    from app.container import Container

log = logging.getLogger(__name__)


def run_worker(container: Container, stop: threading.Event | None = None, *, until_idle: bool = False) -> int:
    """Work the job queue and the purge schedule until `stop` is set (or idle); returns the jobs run."""
    from app.ops.tracing import configure_tracing

    # A span per job and per file when tracing is on (the API has installed its provider already).
    configure_tracing(container.settings.tracing)
    # Announce this worker before its models load (seconds), so that a `kb ingest` meanwhile does not
    # start another one.
    name = worker_name()
    container.jobs.worker_beat(name)
    try:
        if container.settings.ingest.engine != "procrastinate":
            worker = container.worker()
            return worker.run(stop, until_idle=until_idle)
        engine = container.procrastinate_worker()
    except BaseException:
        container.jobs.worker_gone(name)
        raise
    # procrastinate's own signal handling (SIGTERM: finish the deliveries under way, then leave) where it
    # can have it: in a `kb worker` process, not in the API's worker thread.
    main_thread = threading.current_thread() is threading.main_thread()
    return engine.run(stop, until_idle=until_idle, signal_handlers=main_thread)


class WorkerSupervisor:
    """Runs a worker loop in a thread and starts it again when it dies (an exception, a store or database
    that failed under it), waiting longer after each failure in a row; `up` says whether one runs now."""

    def __init__(
        self, target: Callable[[threading.Event], object], *, restart_after_s: float = 1.0,
        max_backoff_s: float = 60.0, name: str = "kb-ingest-worker",
    ) -> None:  # fmt: skip
        self._target = target
        self._first_backoff = restart_after_s
        self._max_backoff = max_backoff_s
        self._name = name
        self._stop = threading.Event()
        self._running = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0

    @property
    def up(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._running.is_set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _supervise(self) -> None:
        backoff = self._first_backoff
        while not self._stop.is_set():
            self._running.set()
            try:
                self._target(self._stop)
                backoff = self._first_backoff  # it ran and returned: not a failure in a row
            except BaseException:
                log.exception("the ingestion worker died; restarting it in %.0f s", backoff)
            finally:
                self._running.clear()
            if self._stop.wait(backoff):
                break
            self.restarts += 1
            backoff = min(backoff * 2, self._max_backoff)


def worker_alive(container: Container) -> bool:
    """Whether some process (the API, `kb jobs work`, a background worker) works the queue now."""
    return bool(container.jobs.live_workers())


def start_background_worker(settings: Settings) -> int:
    """Start a detached worker that runs until idle; returns its process id."""
    log_dir = settings.home / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "worker.log").open("ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.worker", "--until-idle"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "KB_HOME": str(settings.home)},
        )  # fmt: skip
    return proc.pid


def ensure_worker(container: Container) -> bool:
    """Make sure a worker will see to queued jobs and due purges; True if this call started one."""
    if worker_alive(container):
        return False
    start_background_worker(container.settings)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    from app.container import Container
    from app.ops.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m app.worker", description="kb's ingestion worker")
    parser.add_argument("--until-idle", action="store_true", help="exit when no job is queued and no purge is pending")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    # SIGTERM keeps its default (exit now): the next worker rolls back the file under way and resumes.
    stop = threading.Event()
    try:
        run_worker(Container(settings), stop, until_idle=args.until_idle)
    except KeyboardInterrupt:
        stop.set()


if __name__ == "__main__":
    main()
