"""The services a scaled-out kb runs on, started for tests on this machine: PostgreSQL (tests/postgres.py),
Redis (Debian's redis-server) and a Milvus server URI (`milvus-lite server`, the same gRPC protocol as
Milvus Standalone). `backend_settings` turns a test's settings into the same settings on those services,
so that an API test module can run once on the embedded default and once on the services.

Missing binaries skip, except under CI=true, where they fail."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from core.procs import free_port, port_open
from retrieval.milvus_connect import LiteLayout, running_lite_uri, start_lite_server
from tests.conftest import running_in_ci
from tests.postgres import PostgresServer, postgres_server

# The backends an API test module runs on: kb's embedded default, and the services of a scaled-out site.
BACKENDS = ("embedded", "services")


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server on a free loopback port with no persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if running_in_ci():
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(message)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", port):
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def milvus_server(folder: Path) -> Iterator[str]:
    """A `milvus-lite server` process on a free loopback port; its URI."""
    layout = LiteLayout(data_dir=folder / "milvus.db", run_dir=folder / "run")
    proc = start_lite_server(layout)
    try:
        uri = running_lite_uri(layout)
        assert uri is not None, "milvus-lite server started but recorded no endpoint"
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass(frozen=True)
class Services:
    postgres: PostgresServer
    redis_url: str
    milvus_uri: str

    def overrides(self) -> dict[str, Any]:
        """Settings for one kb site on these services: its own database and collection names."""
        return {
            "database": {"url": self.postgres.new_database()},
            "redis": {"url": self.redis_url},
            "milvus": {"uri": self.milvus_uri, "collection_prefix": f"t{uuid.uuid4().hex[:10]}_"},
        }


@contextmanager
def running_services() -> Iterator[Services]:
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kb-services-")))
        postgres = stack.enter_context(postgres_server())
        redis_url = stack.enter_context(redis_server(folder))
        milvus_uri = stack.enter_context(milvus_server(folder / "milvus"))
        yield Services(postgres=postgres, redis_url=redis_url, milvus_uri=milvus_uri)


def merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def backend_settings(request: pytest.FixtureRequest, backend: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """`base` (a test's settings) on `backend`: unchanged for the embedded default."""
    if backend == "embedded":
        return dict(base)
    services: Services = request.getfixturevalue("services")
    return merged(base, services.overrides())


def settings_env(settings: Settings) -> dict[str, str]:
    """The KB_ variables that put a CLI command or another process on `settings`' home and backends."""
    env = {"KB_HOME": str(settings.home)}
    if url := settings.database.url.get_secret_value():
        env["KB_DATABASE__URL"] = url
    if url := settings.redis.url.get_secret_value():
        env["KB_REDIS__URL"] = url
    if settings.milvus.uri:
        env["KB_MILVUS__URI"] = settings.milvus.uri
        env["KB_MILVUS__COLLECTION_PREFIX"] = settings.milvus.collection_prefix
    return env
