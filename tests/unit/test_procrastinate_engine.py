"""The pieces of the procrastinate engine that need no database: the connection string it derives from the
registry's URL, and the setting that refuses it on SQLite at startup."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings
from ingest.procrastinate_engine import conninfo


def test_conninfo_is_the_registry_url_without_the_sqlalchemy_driver() -> None:
    url = "postgresql+psycopg://kb:s%40cret@db.example:5433/kb?sslmode=require"
    assert conninfo(url) == "postgresql://kb:s%40cret@db.example:5433/kb?sslmode=require"
    assert conninfo("postgresql://kb@localhost/kb") == "postgresql://kb@localhost/kb"


def test_conninfo_refuses_a_database_that_is_not_postgresql() -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        conninfo("sqlite:////tmp/kb.db")


def test_the_embedded_engine_is_the_default_and_needs_no_service(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.ingest.engine == "embedded"
    assert s.database_url.startswith("sqlite")


def test_procrastinate_on_sqlite_is_refused_at_startup_with_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="KB_DATABASE__URL=postgresql"):
        Settings(home=tmp_path, ingest={"engine": "procrastinate"})  # type: ignore[arg-type]


def test_procrastinate_on_postgresql_is_accepted(tmp_path: Path) -> None:
    s = Settings(
        home=tmp_path, ingest={"engine": "procrastinate", "worker_concurrency": 3},  # type: ignore[arg-type]
        database={"url": "postgresql+psycopg://kb@db/kb"},  # type: ignore[arg-type]
    )  # fmt: skip
    assert (s.ingest.engine, s.ingest.worker_concurrency) == ("procrastinate", 3)


def test_the_engine_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KB_INGEST__ENGINE", "procrastinate")
    monkeypatch.setenv("KB_DATABASE__URL", "postgresql+psycopg://kb@db/kb")
    monkeypatch.chdir(tmp_path)
    assert Settings().ingest.engine == "procrastinate"
    monkeypatch.setenv("KB_INGEST__ENGINE", "celery")
    with pytest.raises(ValidationError):
        Settings()
