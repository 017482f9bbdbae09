"""The API's ingestion worker runs under a supervisor: started again when it dies (and reported by /readyz:
tests/integration/test_readiness.py)."""

from __future__ import annotations

import threading
import time

from app.worker import WorkerSupervisor


def until(what: str, done: object) -> None:
    deadline = time.monotonic() + 10
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_worker_that_dies_is_started_again() -> None:
    runs: list[int] = []

    def worker(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("the store went away")
        stop.wait()

    supervisor = WorkerSupervisor(worker, restart_after_s=0.01)
    assert not supervisor.up
    supervisor.start()
    until("the worker was not restarted", lambda: supervisor.up and len(runs) == 3)
    assert supervisor.restarts == 2
    supervisor.stop(timeout_s=5)
    assert not supervisor.up and len(runs) == 3
