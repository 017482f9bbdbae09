"""The declarative base of the app's tables, and their creation on the registry's engine."""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

from ingest.registry import create_tables


class AppBase(DeclarativeBase):
    """Tables of the app layer (keys, audit, answers, feedback); the engine is the registry's."""


def create_app_tables(engine: Engine, *tables: type[AppBase]) -> None:
    """CREATE TABLE for those of `tables` that are missing (all of the app's when none is named)."""
    selected: list[Table] | None = [t.__table__ for t in tables] if tables else None  # type: ignore[misc]
    create_tables(AppBase.metadata, engine, tables=selected)
