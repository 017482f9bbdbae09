"""One real API process for the access-control probes, shared by this package's modules.

The documents are ingested and the keys created beforehand through a Container on the same KB_HOME; a
`milvus-lite server` holds the data so that the test's Container and the server process share it, as
`kb up` does. The model server address is a closed port: /ask degrades to passages at once, and those
passages (sources, citations, snippets) are where a leak would show.

The package runs twice: on the embedded default (SQLite, a milvus-lite server under KB_HOME, counters in
memory) and on the services of a scaled-out site (PostgreSQL, Redis, a Milvus server URI; tests/services.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.settings import Settings
from core.procs import free_port
from core.types import Chunk
from tests.conftest import ROOT
from tests.e2e.access.corpus import ALL_DOCS, write_corpus
from tests.servers import wait_until_ready
from tests.services import BACKENDS, merged, running_services, settings_env

# Key names, as the tests refer to them.
ADMIN, EDITOR, EMPLOYEE_A, EMPLOYEE_B, SERVICE = "admin", "editor", "employee-a", "employee-b", "service"
SERVICE_SECRET, EXPIRED, REVOKED = "service-secret", "expired", "revoked"
ROLES = ("admin", "editor", "employee", "service", "anonymous")


@dataclass
class LiveServer:
    backend: str
    url: str
    keys: dict[str, str]  # name -> secret
    log: Path

    def headers(self, key: str | None) -> dict[str, str]:
        return {} if key is None else {"Authorization": f"Bearer {key}"}

    def key(self, name: str) -> str:
        return self.keys[name]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _prepare(settings: Settings, docs: Path) -> dict[str, str]:
    """Ingest the corpus and create the keys, then let go of Milvus and the database before the server starts."""
    from app.access.principal import ALL_KBS
    from app.access.roles import Role
    from app.container import Container

    container = Container(settings)
    try:
        for name in ("default", "secret"):
            container.registry.create_knowledge_base(name)
        for (kb, group), folder in write_corpus(docs).items():
            results = container.ingest.ingest_paths([folder], kb=kb, acl_groups=[group] if group else [])
            assert [r.status for r in results] == ["indexed"] * len(results), results
            by_id = {r.doc_id: r for r in results}
            for project in (p for p in ALL_DOCS if p.kb == kb and p.group == group):
                r = by_id[project.doc_id]
                project.chunk_ids[:] = [Chunk.make_id(r.doc_id, r.version, i) for i in range(r.chunks)]
        keys = container.keys
        made = {
            ADMIN: keys.create(name=ADMIN, role=Role.admin, kbs=[ALL_KBS]),
            EDITOR: keys.create(name=EDITOR, role=Role.editor, groups=["a"], kbs=["default"]),
            EMPLOYEE_A: keys.create(name=EMPLOYEE_A, role=Role.employee, groups=["a"], kbs=["default"]),
            EMPLOYEE_B: keys.create(name=EMPLOYEE_B, role=Role.employee, groups=["b"], kbs=["default", "secret"]),
            SERVICE: keys.create(name=SERVICE, role=Role.service, groups=["a"], kbs=["default"]),
            SERVICE_SECRET: keys.create(
                name=SERVICE_SECRET, role=Role.service, groups=["a"], kbs=["default", "secret"]
            ),
            # Expired a second ago: the check is on every request, not only at start-up.
            EXPIRED: keys.create(
                name=EXPIRED, role=Role.employee, groups=["b"], kbs=["default"], expires_in=timedelta(seconds=-1)
            ),
            REVOKED: keys.create(name=REVOKED, role=Role.admin, kbs=[ALL_KBS]),
        }
        keys.revoke(REVOKED)
        return {name: new.secret for name, new in made.items()}
    finally:
        container.store._client.close()
        container.registry.engine.dispose()


@contextmanager
def _embedded_milvus(home: Path) -> Iterator[None]:
    """A milvus-lite server on KB_HOME's own data, which the Container and `kb serve` both find there."""
    from retrieval.milvus_connect import LiteLayout, start_lite_server

    milvus = start_lite_server(LiteLayout(data_dir=home / "milvus.db", run_dir=home / "run"))
    try:
        yield
    finally:
        os.killpg(milvus.pid, signal.SIGTERM)
        milvus.wait(timeout=30)


def _backend(stack: ExitStack, backend: str, home: Path) -> Mapping[str, Any]:
    """Start what `backend` needs; the settings overrides that point kb at it."""
    if backend == "embedded":
        stack.enter_context(_embedded_milvus(home))
        return {}
    # Its own services, not the module-scoped `services` fixture: this server outlives any one module.
    return stack.enter_context(running_services()).overrides()


@contextmanager
def _serve(env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """`kb serve` with `env`, until it answers /healthz; its URL. Stopped by PID at the end."""
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_ready(server, f"{url}/healthz", log, timeout_s=180, what="kb serve")
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield url
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


# Every test of the package runs on both backends, all of them on one before the other (package scope).
@pytest.fixture(scope="package", params=BACKENDS)
def live(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("access") / "var"
    home.mkdir()
    with ExitStack() as stack:
        overrides = _backend(stack, request.param, home)
        settings = Settings.model_validate(merged({"home": home, "models_dir": home / "models"}, overrides))
        keys = _prepare(settings, home.parent / "docs")
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("KB_")},
            # The worktree's code, not whatever the editable install points at.
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            **settings_env(settings),
            "KB_API__PORT": str(port),
            "KB_API__UI_ENABLED": "false",
            "KB_RERANKER__ENABLED": "false",
            "KB_INGEST__WORKER_IN_API": "false",
            "KB_LLM__BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
            "KB_LLM__CONNECT_RETRIES": "0",
            # Every request is counted (in Redis on the services), against budgets the probes, which send
            # well over a minute's worth of requests from one key, never reach.
            **{f"KB_RATE_LIMITS__{role.upper()}__REQUESTS_PER_MINUTE": "1000000" for role in ROLES},
        }
        log = home.parent / "api.log"
        url = stack.enter_context(_serve(env, port, log))
        yield LiveServer(backend=request.param, url=url, keys=keys, log=log)


@pytest.fixture(scope="package")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c


def assert_error_shape(response: httpx.Response) -> dict[str, str]:
    """Every 4xx: the one JSON error shape, its request id the response's."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "request_id"}, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["request_id"] == response.headers["x-request-id"], (error, response.headers)
    return dict(error)
