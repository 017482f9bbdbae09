"""A throwaway PostgreSQL server for tests of the registry and the job queue on PostgreSQL: Debian's
binaries (`apt-get install postgresql`), a data folder and socket folder in /tmp, a free port on
127.0.0.1, trust authentication, run as the `postgres` system user (PostgreSQL refuses to run as root).

Missing binaries skip the test with the reason, except under CI=true, where they fail it."""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.procs import free_port
from tests.conftest import running_in_ci


@dataclass(frozen=True)
class PostgresServer:
    port: int
    admin_url: str
    control: _Postgres

    def new_database(self) -> str:
        """A fresh, empty database on the server; its SQLAlchemy URL."""
        import psycopg

        name = "kb_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://kb@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        """Shut the server down (fast: open sessions are ended), keeping its data for `start`."""
        self.control.stop()

    def start(self) -> None:
        """Start it again on the same port and data, and wait until it accepts connections."""
        self.control.start()


@dataclass
class _Postgres:
    bindir: Path
    as_user: list[str]
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://kb@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        import psycopg

        with (self.root / "postgres.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.as_user, str(self.bindir / "postgres"), "-D", str(self.data), "-k", str(self.root / "run"),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "max_connections=100"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(self.admin_url.replace("postgresql+psycopg", "postgresql"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    text = (self.root / "postgres.log").read_text()[-3000:]
                    raise RuntimeError(f"postgres did not start:\n{text}") from exc
                time.sleep(0.2)

    def stop(self, *, fast: bool = True) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if fast:
            # pg_ctl's fast mode ends the sessions that clients (a test's connection pool) keep open, where
            # SIGTERM's smart shutdown would wait for them.
            subprocess.run(
                [*self.as_user, str(self.bindir / "pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        else:
            proc.terminate()  # runuser passes the signal on to postgres: a smart shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _unavailable(reason: str) -> None:
    message = f"PostgreSQL is not available: {reason} (apt-get install -y postgresql; see scripts/system-packages.txt)"
    if running_in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _binaries()
    if bindir is None:
        _unavailable("no /usr/lib/postgresql/*/bin/initdb")
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("the psycopg driver is not installed")
    assert bindir is not None
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="kb-pg-"))
    data, sockets = root / "data", root / "run"
    sockets.mkdir()
    if as_user:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "kb", "-E", "UTF8"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    server = _Postgres(bindir=bindir, as_user=as_user, root=root, port=free_port())
    try:
        server.start()
        yield PostgresServer(port=server.port, admin_url=server.admin_url, control=server)
    finally:
        server.stop(fast=False)
        shutil.rmtree(root, ignore_errors=True)
