"""The API's ingestion worker runs under a supervisor: started again when it dies, and reported by /readyz."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from fastapi.testclient import TestClient

from app.auth.roles import Role
from app.container import Container
from app.main import create_app
from app.settings import Settings
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


def test_readyz_says_degraded_while_the_worker_is_down(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, models_dir=tmp_path / "models", ingest={"worker_in_api": False},  # type: ignore[arg-type]
        api={"ui_enabled": False}, llm={"base_url": "http://127.0.0.1:9/v1"},  # type: ignore[arg-type]
    )  # fmt: skip
    container = Container(settings)
    admin = container.keys.create(name="root", role=Role.admin, groups=[], kbs=["*"])
    app = create_app(settings, container)
    client = TestClient(app)  # no lifespan: the test sets the worker itself
    headers = {"Authorization": f"Bearer {admin.secret}"}
    assert "worker" not in client.get("/readyz", headers=headers).json()["components"]  # none in this API

    release = threading.Event()
    dead = WorkerSupervisor(lambda stop: (_ for _ in ()).throw(RuntimeError("boom")), restart_after_s=60)
    app.state.worker = dead
    dead.start()
    until("the worker did not die", lambda: not dead.up and dead._thread is not None)
    time.sleep(0.05)
    body = client.get("/readyz", headers=headers).json()
    assert body["status"] == "degraded" and body["components"]["worker"] == "down"
    assert client.get("/readyz").json() == {"status": "degraded"}  # anyone else: only that
    dead.stop(timeout_s=1)

    alive = WorkerSupervisor(lambda stop: release.wait(), restart_after_s=60)
    app.state.worker = alive
    alive.start()
    until("the worker did not start", lambda: alive.up)
    assert client.get("/readyz", headers=headers).json()["components"]["worker"] == "up"
    release.set()
    alive.stop(timeout_s=5)
