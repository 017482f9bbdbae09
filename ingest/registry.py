"""The document registry: which documents exist, their versions and content hashes (SQLAlchemy 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    String,
    Text,
    create_engine,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def _now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class DocumentRow(Base):
    __tablename__ = "documents"

    kb: Mapped[str] = mapped_column(String(128), primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    title: Mapped[str] = mapped_column(String(1024), default="")
    source: Mapped[str] = mapped_column(String(2048), default="")
    current_version: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(32), default="pending")  # pending|ready|failed|deleted
    acl_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, onupdate=_now)


class VersionRow(Base):
    __tablename__ = "document_versions"
    __table_args__ = (ForeignKeyConstraint(["kb", "doc_id"], ["documents.kb", "documents.doc_id"], ondelete="CASCADE"),)

    kb: Mapped[str] = mapped_column(String(128), primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(32), default="indexing")  # indexing|ready|failed|replaced
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class Registry:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url, future=True)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def document(self, kb: str, doc_id: str) -> DocumentRow | None:
        with self._sessions() as session:
            return session.get(DocumentRow, (kb, doc_id))

    def current_version(self, kb: str, doc_id: str) -> VersionRow | None:
        with self._sessions() as session:
            doc = session.get(DocumentRow, (kb, doc_id))
            if doc is None or doc.current_version == 0:
                return None
            return session.get(VersionRow, (kb, doc_id, doc.current_version))

    def documents(self, kb: str) -> list[DocumentRow]:
        with self._sessions() as session:
            return list(session.scalars(select(DocumentRow).where(DocumentRow.kb == kb).order_by(DocumentRow.doc_id)))

    def begin_version(
        self, kb: str, doc_id: str, *, title: str, source: str, sha256: str, size: int,
        acl_groups: list[str], tags: list[str],
    ) -> int:  # fmt: skip
        """Record a new version being indexed; readers keep seeing the current one until `publish`."""
        with self.session() as session:
            doc = session.get(DocumentRow, (kb, doc_id))
            if doc is None:
                doc = DocumentRow(kb=kb, doc_id=doc_id, title=title, source=source, status="pending")
                session.add(doc)
                session.flush()
            doc.acl_groups, doc.tags = acl_groups, tags
            last = session.scalar(
                select(VersionRow.version)
                .where(VersionRow.kb == kb, VersionRow.doc_id == doc_id)
                .order_by(VersionRow.version.desc())
                .limit(1)
            )
            version = (last or 0) + 1
            session.add(VersionRow(kb=kb, doc_id=doc_id, version=version, sha256=sha256, size_bytes=size))
            return version

    def publish(self, kb: str, doc_id: str, version: int, *, title: str, pages: int | None, chunks: int) -> None:
        with self.session() as session:
            doc = session.get(DocumentRow, (kb, doc_id))
            row = session.get(VersionRow, (kb, doc_id, version))
            assert doc is not None and row is not None
            if doc.current_version:
                old = session.get(VersionRow, (kb, doc_id, doc.current_version))
                if old is not None and old.version != version:
                    old.status = "replaced"
            row.status, row.pages, row.chunk_count = "ready", pages, chunks
            doc.current_version, doc.status, doc.title = version, "ready", title

    def fail(self, kb: str, doc_id: str, version: int, error: str) -> None:
        with self.session() as session:
            row = session.get(VersionRow, (kb, doc_id, version))
            doc = session.get(DocumentRow, (kb, doc_id))
            if row is not None:
                row.status, row.error = "failed", error[:4000]
            if doc is not None and doc.current_version == 0:
                doc.status = "failed"
