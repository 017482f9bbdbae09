"""The ingestion worker's entry points, one for every way kb runs it.

- the API runs `run_worker` in a thread while it serves;
- `kb jobs work` and `kb ingest --wait` (when no worker is alive) run it in the CLI's own process;
- `kb ingest` and `kb docs delete` (when no worker is alive) start `python -m app.worker --until-idle`
  detached, so that the job still completes, and retired chunks are still purged, after the CLI exits.
  It logs to $KB_HOME/logs/worker.log.

Every poll also finishes access changes (`kb docs set-acl`) left part-way by a process that died or a
store that failed: their documents stay hidden until then.

A worker started "until idle" leaves when no job is queued and no retired version waits for its purge.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.settings import Settings
from ingest.jobs import worker_name

if TYPE_CHECKING:
    # Imported when a worker is built, not when the CLI starts: it pulls in the models' libraries.
    from app.container import Container


def run_worker(container: Container, stop: threading.Event | None = None, *, until_idle: bool = False) -> int:
    """Work the job queue and the purge schedule until `stop` is set (or idle); returns the jobs run."""
    # Announce this worker before its models load (seconds), so that a `kb ingest` meanwhile does not
    # start another one.
    name = worker_name()
    container.jobs.worker_beat(name)
    try:
        worker = container.worker()
    except BaseException:
        container.jobs.worker_gone(name)
        raise
    return worker.run(stop, until_idle=until_idle)


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
    from app.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m app.worker", description="kb's ingestion worker")
    parser.add_argument("--until-idle", action="store_true", help="exit when no job is queued and no purge is pending")
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level)
    # SIGTERM keeps its default (exit now): the next worker rolls back the file under way and resumes.
    stop = threading.Event()
    try:
        run_worker(Container(settings), stop, until_idle=args.until_idle)
    except KeyboardInterrupt:
        stop.set()


if __name__ == "__main__":
    main()
