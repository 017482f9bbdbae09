"""/readyz follows the components as they go down and come back: a real `milvus-lite server` process killed
and started again on its port and data, a real PostgreSQL server stopped and started, the model server
(a real socket speaking the OpenAI protocol) closed, and the API's ingestion worker dead."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.access.roles import Role
from app.container import Container
from app.main import create_app
from app.settings import Settings
from app.worker import WorkerSupervisor
from core.procs import free_port
from retrieval.milvus_connect import LiteLayout, start_lite_server
from tests.servers import stop
from tests.slow_llm import SlowLLM, running_slow_llm

EVERYTHING_UP = {"database": "up", "milvus": "up", "embedder": "up", "llm": "up"}


class MilvusServer:
    """`milvus-lite server` on a fixed port and data folder, so that it can be killed and started again
    where the API's client left it."""

    def __init__(self, root: Path) -> None:
        self.layout = LiteLayout(data_dir=root / "milvus.db", run_dir=root / "milvus-run")
        self.port = free_port()
        self.proc = start_lite_server(self.layout, port=self.port)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def start(self) -> None:
        self.proc = start_lite_server(self.layout, port=self.port)

    def close(self) -> None:
        if self.proc.poll() is None:
            stop(self.proc, timeout_s=30)


@dataclass
class Served:
    client: TestClient
    admin: dict[str, str]
    llm: SlowLLM

    def ready(self, *, admin: bool = True) -> tuple[int, dict[str, Any]]:
        r = self.client.get("/readyz", headers=self.admin if admin else {})
        return r.status_code, r.json()


def settings_for(home: Path, *, llm_url: str, **groups: Any) -> Settings:
    return Settings(
        home=home, models_dir=home / "models", reranker={"enabled": False}, api={"ui_enabled": False},
        ingest={"worker_in_api": False}, llm={"base_url": llm_url, "connect_retries": 0},
        **groups,
    )  # fmt: skip


@contextmanager
def serve(settings: Settings, llm: SlowLLM) -> Iterator[Served]:
    container = Container(settings)
    admin = container.keys.create(name="root", role=Role.admin, groups=[], kbs=["*"])
    with TestClient(create_app(settings, container)) as client:  # the lifespan warms everything up
        yield Served(client=client, admin={"Authorization": f"Bearer {admin.secret}"}, llm=llm)


def until(what: str, served: Served, done: Callable[[int, dict[str, Any]], bool], timeout_s: float = 45) -> None:
    """Probe /readyz until `done(status, body)`; fail with the last answer once the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = served.ready()
        if done(status, body):
            return
        assert time.monotonic() < deadline, f"{what}: still {status} {body}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    server = MilvusServer(tmp_path_factory.mktemp("milvus"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, milvus: MilvusServer) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("ready-home")
    with running_slow_llm() as llm, serve(settings_for(home, llm_url=llm.url, milvus={"uri": milvus.uri}), llm) as ok:
        yield ok


def test_ready_when_everything_answers(served: Served) -> None:
    status, body = served.ready()
    assert status == 200 and body["status"] == "ready" and body["components"] == EVERYTHING_UP, body
    assert served.ready(admin=False) == (200, {"status": "ready"})  # anyone else: only that


def test_milvus_down_takes_the_instance_out_of_rotation_until_it_is_back(served: Served, milvus: MilvusServer) -> None:
    milvus.kill()
    try:
        until("Milvus killed", served, lambda status, body: status == 503)
        body = served.ready()[1]
        assert body["status"] == "unavailable" and body["components"] == {**EVERYTHING_UP, "milvus": "down"}, body
        assert served.ready(admin=False) == (503, {"status": "unavailable"})
        # Answering without Milvus fails; the probe said so before any question did.
    finally:
        milvus.start()  # the same port and data: the API's client reconnects by itself
    until("Milvus back", served, lambda status, body: status == 200 and body["status"] == "ready")


def test_checks_are_bounded_by_the_timeout(served: Served) -> None:
    # Three blocking checks (database, Milvus, model server) and one over HTTP: all of them together take
    # about as long as one.
    started = time.monotonic()
    for _ in range(5):
        assert served.ready()[0] == 200
    assert (time.monotonic() - started) / 5 < 2.0


def test_model_server_or_worker_down_is_degraded_not_unavailable(served: Served) -> None:
    app = served.client.app
    url = app.state.container.generator.base_url  # type: ignore[attr-defined]
    closed = f"http://127.0.0.1:{free_port()}/v1"
    app.state.container.generator._client = app.state.container.generator._client.with_options(  # type: ignore[attr-defined]
        base_url=closed
    )
    try:
        status, body = served.ready()
        assert status == 200 and body["status"] == "degraded" and body["components"]["llm"] == "down", body
        assert served.ready(admin=False) == (200, {"status": "degraded"})
    finally:
        app.state.container.generator._client = app.state.container.generator._client.with_options(  # type: ignore[attr-defined]
            base_url=url
        )

    # The API's ingestion worker: none in this API, so not reported; dead, degraded; alive, up.
    assert "worker" not in served.ready()[1]["components"]
    dead = WorkerSupervisor(lambda stop: (_ for _ in ()).throw(RuntimeError("boom")), restart_after_s=60)
    app.state.worker = dead  # type: ignore[attr-defined]
    try:
        dead.start()
        until("the worker did not die", served, lambda status, body: body["components"].get("worker") == "down")
        status, body = served.ready()
        assert status == 200 and body["status"] == "degraded", body
        assert served.ready(admin=False) == (200, {"status": "degraded"})
        dead.stop(timeout_s=1)

        release = threading.Event()
        alive = WorkerSupervisor(lambda stop: release.wait(), restart_after_s=60)
        app.state.worker = alive  # type: ignore[attr-defined]
        alive.start()
        until("the worker did not start", served, lambda status, body: body["components"].get("worker") == "up")
        status, body = served.ready()
        assert status == 200 and body["status"] == "ready", body
        release.set()
        alive.stop(timeout_s=5)
    finally:
        app.state.worker = None  # type: ignore[attr-defined]


def test_database_down_takes_the_instance_out_of_rotation_until_it_is_back(
    tmp_path: Path, milvus: MilvusServer
) -> None:
    from tests.postgres import postgres_server

    with postgres_server() as postgres, running_slow_llm() as llm:
        settings = settings_for(
            tmp_path, llm_url=llm.url, milvus={"uri": milvus.uri, "collection_prefix": "pg_"},
            database={"url": postgres.new_database()},
        )  # fmt: skip
        with serve(settings, llm) as served:
            until("PostgreSQL up", served, lambda status, body: status == 200 and body["status"] == "ready")
            postgres.stop()
            try:
                until("PostgreSQL stopped", served, lambda status, body: status == 503)
                status, body = served.ready(admin=False)
                # Without the database no key can be checked either: everyone gets the bare status.
                assert (status, body) == (503, {"status": "unavailable"})
            finally:
                postgres.start()
            until("PostgreSQL back", served, lambda status, body: status == 200 and body["status"] == "ready")
            assert served.ready()[1]["components"] == EVERYTHING_UP
