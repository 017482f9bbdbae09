"""The document registry: documents, their versions, hashes and states (SQLAlchemy 2; SQLite or any SQL URL).

Readers see exactly one version of a document at any time. The vector store may briefly hold two (the
new one being indexed, the old one not yet purged); `hidden_versions` names the ones queries must not
see, and the switch from old to new is the single SQL transaction in `publish`.

Every write that decides something (begin, publish, fail, a job's claim) checks and writes in one
transaction that holds the rows it reads: `SELECT ... FOR UPDATE` on PostgreSQL, and on SQLite a write
transaction taken up front (`BEGIN IMMEDIATE`), so that no other writer runs between the check and the
write. Workers claim a job's files a few at a time; each claim is a row with its own fencing token (from
a counter on the job row), and a version begun under a claim carries that token: a worker that lost its
claim (paused past the heartbeat timeout, requeued) can neither begin, publish nor fail anything under it
any more (`LostJob`), while the other workers' claims of the same job go on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from core.names import KB_NAME
from ingest.errors import DocIdConflict


def now() -> datetime:
    return datetime.now(UTC)


def create_tables(metadata: MetaData, engine: Engine, tables: Sequence[Table] | None = None) -> None:
    """CREATE TABLE for the tables that are missing. Processes that start together on a new database (the
    API and its workers) race between checking and creating: the loser's CREATE fails because the winner's
    table now exists, and checking again finds it."""
    for attempt in range(5):
        try:
            metadata.create_all(engine, tables=tables)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))


class RegistrySchemaError(RuntimeError):
    pass


class PublishRefused(RuntimeError):
    """A version may not become (or stop being) what readers see; its chunks must go. `code` is stable."""

    code = "refused"


class DocumentDeletedMeanwhile(PublishRefused):
    """The document was deleted after this version was begun: the delete wins."""

    code = "document_deleted"


class Superseded(PublishRefused):
    """A version begun later was published first: the later one wins."""

    code = "superseded"


class LostJob(PublishRefused):
    """The job is no longer this worker's (requeued after a missed heartbeat, cancelled, finished by
    another): stop, and remove the chunks of the versions begun under it that are not published."""

    code = "lost_job"


@dataclass(frozen=True)
class Lease:
    """A worker's hold on some files of a job: the job and the fencing token of the claim (a JobClaimRow)."""

    job_id: str
    token: int


def _timeout_args(url: str, timeout_s: float) -> dict[str, object]:
    """Driver arguments that bound each database call by `timeout_s`."""
    if url.startswith("sqlite"):
        # Workers, the API and the CLI write the same file; wait this long for a lock, then fail.
        return {"timeout": timeout_s}
    if url.startswith(("postgresql", "postgres")):
        # libpq (psycopg 2 and 3): the server cancels a statement that runs longer.
        return {
            "connect_timeout": max(1, round(timeout_s)),
            "options": f"-c statement_timeout={round(timeout_s * 1000)}",
        }
    return {}


class Base(DeclarativeBase):
    pass


class KnowledgeBaseRow(Base):
    """A knowledge base: an access boundary (keys are granted knowledge bases by name), with the groups
    its documents get when they are uploaded without any."""

    __tablename__ = "knowledge_bases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    default_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


@dataclass(frozen=True)
class KnowledgeBase:
    name: str
    description: str
    default_groups: list[str]
    created_at: datetime

    @classmethod
    def of(cls, row: KnowledgeBaseRow) -> KnowledgeBase:
        return cls(row.name, row.description, list(row.default_groups), as_utc(row.created_at))


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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, onupdate=now)
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Where the published content came from (a file's absolute path, an archive member, "upload:<name>"):
    # another origin mapping to the same id is a conflict, not a silent replace.
    origin: Mapped[str] = mapped_column(String(4096), default="")
    # Bumped by every delete: a version begun before the delete may not publish after it.
    epoch: Mapped[int] = mapped_column(Integer, default=0)


class VersionRow(Base):
    __tablename__ = "document_versions"
    __table_args__ = (ForeignKeyConstraint(["kb", "doc_id"], ["documents.kb", "documents.doc_id"], ondelete="CASCADE"),)

    kb: Mapped[str] = mapped_column(String(128), primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(2048), default="")
    pages: Mapped[int | None] = mapped_column(Integer, nullable=True)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    # indexing → ready → replaced | deleted; or indexing → failed | interrupted | cancelled
    status: Mapped[str] = mapped_column(String(32), default="indexing")
    error: Mapped[str] = mapped_column(Text, default="")
    error_code: Mapped[str] = mapped_column(String(64), default="")
    job_id: Mapped[str] = mapped_column(String(64), default="")
    # The fencing token of the job's claim that began this version.
    job_token: Mapped[int] = mapped_column(Integer, default=0)
    # The document's epoch when this version was begun (see DocumentRow.epoch).
    doc_epoch: Mapped[int] = mapped_column(Integer, default=0)
    origin: Mapped[str] = mapped_column(String(4096), default="")
    acl_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    # False while the vector store may still hold this version's chunks.
    purged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobRow(Base):
    """An ingestion job (ingest/jobs.py has the queue); here because versions are fenced by its token."""

    __tablename__ = "jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kb: Mapped[str] = mapped_column(String(128))
    # queued → running → done | failed | cancelled; running → queued (its worker died)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    stage: Mapped[str] = mapped_column(String(16), default="queued")
    current_file: Mapped[str] = mapped_column(String(2048), default="")
    # None (JSON null): not given, so each document keeps its own, or a new one gets its kb's defaults;
    # a list, even an empty one, replaces them. Stored as JSON null, so a column made NOT NULL by an older
    # kb still takes it.
    acl_groups: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    tags: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    files_total: Mapped[int] = mapped_column(Integer, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    files_failed: Mapped[int] = mapped_column(Integer, default=0)
    pages_total: Mapped[int] = mapped_column(Integer, default=0)
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(256), default="")
    # The last fencing token handed out: every claim of some of its files takes the next one.
    token: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobClaimRow(Base):
    """One worker's claim of some files of a job: the unit that is fenced, heartbeated and requeued. Several
    workers hold claims of the same job at once; each file (a job item) names the claim that holds it."""

    __tablename__ = "job_claims"
    __table_args__ = (ForeignKeyConstraint(["job_id"], ["jobs.job_id"], ondelete="CASCADE"),)

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(256), default="")
    # active → released (its files are finished or handed back) | lost (requeued: its worker died or stalled)
    state: Mapped[str] = mapped_column(String(16), default="active", index=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # Progress of the claim's files under way (finished files are counted from the items).
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    pages_total: Mapped[int] = mapped_column(Integer, default=0)
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    timings: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


def owned_claim(session: Session, lease: Lease) -> JobClaimRow:
    """The claim row, locked, while `lease` still holds it; LostJob otherwise. Locking the claim, not the job,
    lets the workers of one job publish side by side; a requeue locks the same row, so it waits for (or
    fences out) a publish under way."""
    claim = session.get(JobClaimRow, (lease.job_id, lease.token), with_for_update=True)
    if claim is None or claim.state != "active":
        raise LostJob(f"job {lease.job_id}: claim {lease.token} is no longer held by this worker")
    return claim


def owned_job(session: Session, lease: Lease) -> JobRow:
    """The job row, locked (after the claim), while `lease` still holds its claim; LostJob otherwise."""
    owned_claim(session, lease)
    job = session.get(JobRow, lease.job_id, with_for_update=True)
    if job is None or job.state != "running":
        raise LostJob(f"job {lease.job_id} is no longer running (claim {lease.token})")
    return job


class PendingAccessRow(Base):
    """A change of a document's groups and tags whose chunks are not all rewritten yet. While the row
    exists the document is hidden from every reader (fail closed); whoever holds the claim rewrites the
    chunks, and a worker takes over a claim whose holder died (`claimed_until` passed)."""

    __tablename__ = "pending_access"
    __table_args__ = (ForeignKeyConstraint(["kb", "doc_id"], ["documents.kb", "documents.doc_id"], ondelete="CASCADE"),)

    kb: Mapped[str] = mapped_column(String(128), primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    acl_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # A new id for every request: a rewrite finished for an older request does not count for a newer one.
    change_id: Mapped[str] = mapped_column(String(32))
    # Bumped by every claim, so that a claim is a conditional UPDATE two processes cannot both win.
    claims: Mapped[int] = mapped_column(Integer, default=0)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


@dataclass(frozen=True)
class AccessChange:
    """What a document's chunks must carry: the groups and tags of the latest request, for its current version."""

    kb: str
    doc_id: str
    version: int
    acl_groups: list[str]
    tags: list[str]
    change_id: str


@dataclass(frozen=True)
class VersionRef:
    doc_id: str
    version: int


@dataclass(frozen=True)
class RetiredVersion:
    kb: str
    ref: VersionRef
    retired_at: datetime | None


_RETIRED = ("replaced", "deleted", "failed", "interrupted", "cancelled")


class Registry:
    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # SQLite's in-memory pools take no pool_timeout; file and server databases wait this long for a
        # free connection.
        pool: dict[str, float] = {} if url.startswith("sqlite") else {"pool_timeout": timeout_s}
        self.engine: Engine = create_engine(url, future=True, connect_args=_timeout_args(url, timeout_s), **pool)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)
        event.listen(self.engine, "before_cursor_execute", _nul_replaced, retval=True)
        self._check_schema()
        create_tables(Base.metadata, self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Write transactions take SQLite's write lock when they begin, not at their first write, so that
        # what they read cannot change before they write (on PostgreSQL, FOR UPDATE locks the rows read).
        self._writes = sessionmaker(self.engine.execution_options(kb_write=True), expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _check_schema(self) -> None:
        inspector = inspect(self.engine)
        for table in Base.metadata.sorted_tables:
            if not inspector.has_table(table.name):
                continue
            have = {c["name"] for c in inspector.get_columns(table.name)}
            missing = {c.name for c in table.columns} - have
            if missing:
                raise RegistrySchemaError(
                    f"the registry database was made by an older kb (table {table.name} lacks "
                    f"{', '.join(sorted(missing))}); move KB_HOME aside and ingest again"
                )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: committed at the end, rolled back on an exception."""
        with self._writes() as session, session.begin():
            yield session

    # -- reads ------------------------------------------------------------------------------------
    def document(self, kb: str, doc_id: str) -> DocumentRow | None:
        with self._sessions() as session:
            return session.get(DocumentRow, (kb, doc_id))

    def current_version(self, kb: str, doc_id: str) -> VersionRow | None:
        with self._sessions() as session:
            doc = session.get(DocumentRow, (kb, doc_id))
            if doc is None or doc.current_version == 0 or doc.status == "deleted":
                return None
            return session.get(VersionRow, (kb, doc_id, doc.current_version))

    def documents(self, kb: str, *, include_deleted: bool = False) -> list[DocumentRow]:
        with self._sessions() as session:
            query = select(DocumentRow).where(DocumentRow.kb == kb)
            if not include_deleted:
                query = query.where(DocumentRow.status != "deleted")
            return list(session.scalars(query.order_by(DocumentRow.doc_id)))

    def versions(self, kb: str, doc_id: str) -> list[VersionRow]:
        with self._sessions() as session:
            query = select(VersionRow).where(VersionRow.kb == kb, VersionRow.doc_id == doc_id)
            return list(session.scalars(query.order_by(VersionRow.version.desc())))

    def hidden_versions(self, kb: str) -> list[VersionRef]:
        """Versions whose chunks may be in the store but that readers must not see: replaced, deleted or
        not yet published ones, and every version of a document whose groups are being changed."""
        with self._sessions() as session:
            rows = session.execute(
                select(
                    VersionRow.doc_id, VersionRow.version, DocumentRow.current_version, DocumentRow.status,
                    PendingAccessRow.change_id,
                )
                .join(DocumentRow, (DocumentRow.kb == VersionRow.kb) & (DocumentRow.doc_id == VersionRow.doc_id))
                .outerjoin(
                    PendingAccessRow,
                    (PendingAccessRow.kb == VersionRow.kb) & (PendingAccessRow.doc_id == VersionRow.doc_id),
                )
                .where(VersionRow.kb == kb, VersionRow.purged.is_(False))
            ).all()  # fmt: skip
        return [
            VersionRef(doc_id, version)
            for doc_id, version, current, doc_status, pending in rows
            if version != current or doc_status == "deleted" or pending is not None
        ]

    def retired(self, kb: str | None = None) -> list[RetiredVersion]:
        """Retired versions (replaced, deleted, failed) whose chunks may still be in the store, oldest first."""
        query = select(VersionRow.kb, VersionRow.doc_id, VersionRow.version, VersionRow.retired_at).where(
            VersionRow.purged.is_(False), VersionRow.status.in_(_RETIRED)
        )
        if kb is not None:
            query = query.where(VersionRow.kb == kb)
        with self._sessions() as session:
            rows = session.execute(query).all()
        found = [RetiredVersion(k, VersionRef(d, v), as_utc(r) if r is not None else None) for k, d, v, r in rows]
        # A version retired before kb recorded the moment is due at once.
        return sorted(found, key=lambda r: r.retired_at or datetime.min.replace(tzinfo=UTC))

    def indexing_versions(self, job_id: str) -> list[VersionRef]:
        """Versions a job had started but not finished (its worker died mid-file)."""
        with self._sessions() as session:
            rows = session.execute(
                select(VersionRow.doc_id, VersionRow.version).where(
                    VersionRow.job_id == job_id, VersionRow.status == "indexing"
                )
            ).all()
        return [VersionRef(d, v) for d, v in rows]

    def knowledge_bases(self) -> list[KnowledgeBase]:
        with self._sessions() as session:
            rows = session.scalars(select(KnowledgeBaseRow).order_by(KnowledgeBaseRow.name))
            return [KnowledgeBase.of(r) for r in rows]

    def knowledge_base(self, name: str) -> KnowledgeBase | None:
        with self._sessions() as session:
            row = session.get(KnowledgeBaseRow, name)
            return KnowledgeBase.of(row) if row is not None else None

    def busy(self, kb: str) -> list[str]:
        """What is changing the knowledge base's chunks now: queued or running jobs, pending access changes."""
        with self._sessions() as session:
            jobs = session.scalars(
                select(JobRow.job_id).where(JobRow.kb == kb, JobRow.state.in_(("queued", "running")))
            ).all()
        return [f"job {j}" for j in jobs] + [f"access change of {d}" for _, d in self.access_pending(kb)]

    def document_counts(self) -> dict[str, int]:
        """Documents (not deleted) per knowledge base."""
        with self._sessions() as session:
            rows = session.execute(
                select(DocumentRow.kb, func.count()).where(DocumentRow.status != "deleted").group_by(DocumentRow.kb)
            ).all()
        return {kb: int(n) for kb, n in rows}

    def resolve_access(
        self, kb: str, doc_id: str, acl_groups: Sequence[str] | None, tags: Sequence[str] | None
    ) -> tuple[list[str], list[str]]:
        """The groups and tags a new version of `doc_id` gets: those given, else the document's own (the
        ones a pending change is giving it, if any), else for a new document its knowledge base's default
        groups and no tags. A knowledge base without a row gets one here, with no default groups: readable
        by admins only until someone grants more."""
        with self.session() as session:
            doc = session.get(DocumentRow, (kb, doc_id))
            if doc is not None and doc.current_version:
                held: DocumentRow | PendingAccessRow = session.get(PendingAccessRow, (kb, doc_id)) or doc
                groups, labels = list(held.acl_groups), list(held.tags)
            else:
                row = session.get(KnowledgeBaseRow, kb)
                if row is None and KB_NAME.match(kb):
                    row, _ = _ensure_knowledge_base(session, kb, description="", default_groups=[])
                groups, labels = (list(row.default_groups) if row is not None else []), []
        return (groups if acl_groups is None else list(acl_groups), labels if tags is None else list(tags))

    # -- access changes ----------------------------------------------------------------------------
    def request_access_change(
        self, kb: str, doc_id: str, *, acl_groups: Sequence[str] | None, tags: Sequence[str] | None
    ) -> AccessChange | None:
        """Record new groups and/or tags (None: keep) for a published document and hide it from readers
        until its chunks carry them; None when there is no such document (or none published, or deleted)."""
        with self.session() as session:
            doc = session.get(DocumentRow, (kb, doc_id))
            if doc is None or not doc.current_version or doc.status == "deleted":
                return None
            pending = session.get(PendingAccessRow, (kb, doc_id))
            base: DocumentRow | PendingAccessRow = pending or doc
            groups = list(base.acl_groups) if acl_groups is None else list(acl_groups)
            labels = list(base.tags) if tags is None else list(tags)
            change_id = uuid.uuid4().hex
            if pending is None:
                session.add(
                    PendingAccessRow(kb=kb, doc_id=doc_id, acl_groups=groups, tags=labels, change_id=change_id,
                                     claims=0, requested_at=now())
                )  # fmt: skip
            else:
                pending.acl_groups, pending.tags, pending.change_id = groups, labels, change_id
                pending.requested_at = now()
            return AccessChange(kb, doc_id, doc.current_version, groups, labels, change_id)

    def claim_access_change(self, kb: str, doc_id: str, *, lease_s: float) -> AccessChange | None:
        """The pending change of `doc_id`, claimed for `lease_s` seconds by the caller, who rewrites the
        chunks; None when nothing is pending or another process holds an unexpired claim."""
        with self.session() as session:
            pending = session.get(PendingAccessRow, (kb, doc_id))
            doc = session.get(DocumentRow, (kb, doc_id))
            if pending is None or doc is None:
                return None
            if pending.claimed_until is not None and as_utc(pending.claimed_until) > now():
                return None
            taken = session.execute(
                update(PendingAccessRow)
                .where(PendingAccessRow.kb == kb, PendingAccessRow.doc_id == doc_id,
                       PendingAccessRow.claims == pending.claims)
                .values(claims=pending.claims + 1, claimed_until=now() + timedelta(seconds=lease_s))
                .execution_options(synchronize_session=False)
            )  # fmt: skip
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return AccessChange(
                kb, doc_id, doc.current_version, list(pending.acl_groups), list(pending.tags), pending.change_id
            )

    def finish_access_change(self, change: AccessChange) -> bool:
        """Publish the groups and tags the chunks now carry, and show the document again; False (and the
        claim released) when a newer request or a newly published version came meanwhile."""
        with self.session() as session:
            pending = session.get(PendingAccessRow, (change.kb, change.doc_id))
            doc = session.get(DocumentRow, (change.kb, change.doc_id))
            if pending is None or doc is None:
                return False
            if pending.change_id != change.change_id or doc.current_version != change.version:
                pending.claimed_until = None
                return False
            doc.acl_groups, doc.tags = list(change.acl_groups), list(change.tags)
            row = session.get(VersionRow, (change.kb, change.doc_id, change.version))
            if row is not None:
                row.acl_groups, row.tags = list(change.acl_groups), list(change.tags)
            session.delete(pending)
            return True

    def release_access_change(self, kb: str, doc_id: str) -> None:
        """Give up a claim (the rewrite failed): the next repair pass may take it at once."""
        with self.session() as session:
            pending = session.get(PendingAccessRow, (kb, doc_id))
            if pending is not None:
                pending.claimed_until = None

    def access_pending(self, kb: str | None = None, *, claimable: bool = False) -> list[tuple[str, str]]:
        """(kb, doc_id) of documents hidden by a change not finished; `claimable`: only those whose claim
        is free or expired (left by a process that died)."""
        query = select(PendingAccessRow.kb, PendingAccessRow.doc_id, PendingAccessRow.claimed_until)
        if kb is not None:
            query = query.where(PendingAccessRow.kb == kb)
        with self._sessions() as session:
            rows = session.execute(query.order_by(PendingAccessRow.requested_at)).all()
        moment = now()
        return [(k, d) for k, d, until in rows if not claimable or until is None or as_utc(until) <= moment]

    # -- knowledge bases --------------------------------------------------------------------------
    def create_knowledge_base(
        self, name: str, *, description: str = "", default_groups: list[str] | None = None
    ) -> tuple[KnowledgeBase, bool]:
        """The knowledge base `name`, and whether this call created it (an existing one is left as is)."""
        with self.session() as session:
            row, created = _ensure_knowledge_base(
                session, name, description=description, default_groups=list(default_groups or [])
            )
            return KnowledgeBase.of(row), created

    def update_knowledge_base(
        self, name: str, *, description: str | None = None, default_groups: list[str] | None = None
    ) -> KnowledgeBase | None:
        with self.session() as session:
            row = session.get(KnowledgeBaseRow, name)
            if row is None:
                return None
            if description is not None:
                row.description = description
            if default_groups is not None:
                row.default_groups = list(default_groups)
            # What was stored, which is not always what was given (a NUL is stored as U+FFFD).
            session.flush()
            session.refresh(row)
            return KnowledgeBase.of(row)

    def delete_knowledge_base(self, name: str) -> bool:
        """Forget the knowledge base and its documents, with their versions (the caller drops its
        collection); False when there was neither."""
        with self.session() as session:
            row = session.get(KnowledgeBaseRow, name)
            docs = list(session.scalars(select(DocumentRow).where(DocumentRow.kb == name)))
            for doc in docs:
                session.delete(doc)
            if row is not None:
                session.delete(row)
            return row is not None or bool(docs)

    # -- writes -----------------------------------------------------------------------------------
    def begin_version(
        self, kb: str, doc_id: str, *, title: str, source: str, sha256: str, size: int,
        acl_groups: list[str], tags: list[str], job_id: str = "", lease: Lease | None = None, origin: str = "",
        replace: bool = True,
    ) -> int:  # fmt: skip
        """Record a new version being indexed; readers keep seeing the current one until `publish`.

        `origin` says where the content comes from; unless `replace` (the caller named the id), a
        document of another origin under the same id is a DocIdConflict."""
        for attempt in range(2):
            try:
                with self.session() as session:
                    return self._begin_version(
                        session, kb, doc_id, title=title, source=source, sha256=sha256, size=size,
                        acl_groups=acl_groups, tags=tags, job_id=lease.job_id if lease else job_id, lease=lease,
                        origin=origin, replace=replace,
                    )  # fmt: skip
            except IntegrityError:
                # Two transactions created the same new document at once (PostgreSQL); the loser retries
                # and finds the winner's row.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _begin_version(
        session: Session, kb: str, doc_id: str, *, title: str, source: str, sha256: str, size: int,
        acl_groups: list[str], tags: list[str], job_id: str, lease: Lease | None, origin: str, replace: bool,
    ) -> int:  # fmt: skip
        if lease is not None:
            owned_claim(session, lease)
        doc = session.get(DocumentRow, (kb, doc_id), with_for_update=True)
        if doc is None:
            doc = DocumentRow(kb=kb, doc_id=doc_id, title=title, source=source, status="pending", origin=origin)
            session.add(doc)
            session.flush()
        elif not replace and origin and doc.origin and doc.origin != origin and doc.status in ("ready", "pending"):
            raise DocIdConflict(
                f"document id {doc_id!r} in {kb!r} is taken by {_shown(doc.origin)}; {_shown(origin)} was not "
                f"indexed over it (name the document id explicitly to replace it)"
            )
        last = session.scalar(
            select(VersionRow.version)
            .where(VersionRow.kb == kb, VersionRow.doc_id == doc_id)
            .order_by(VersionRow.version.desc())
            .limit(1)
        )
        version = (last or 0) + 1
        session.add(
            VersionRow(
                kb=kb, doc_id=doc_id, version=version, sha256=sha256, size_bytes=size, source=source,
                job_id=job_id, job_token=lease.token if lease else 0, doc_epoch=doc.epoch, origin=origin,
                acl_groups=acl_groups, tags=tags,
            )
        )  # fmt: skip
        return version

    def publish(
        self, kb: str, doc_id: str, version: int, *, title: str, pages: int | None, chunks: int,
        timings: dict[str, float] | None = None, lease: Lease | None = None,
    ) -> None:  # fmt: skip
        """The switch: from this commit on, readers see `version` and not the one it replaces.

        Refused (PublishRefused, nothing changed) when the document was deleted since the version was
        begun, when a version begun later is already published, or when `lease` no longer holds the job."""
        with self.session() as session:
            if lease is not None:
                owned_claim(session, lease)
            doc = session.get(DocumentRow, (kb, doc_id), with_for_update=True)
            row = session.get(VersionRow, (kb, doc_id, version), with_for_update=True)
            if doc is None or row is None or row.status != "indexing":
                raise LostJob(f"{doc_id} v{version} is no longer being indexed ({row.status if row else 'gone'})")
            if lease is not None and (row.job_id != lease.job_id or row.job_token != lease.token):
                raise LostJob(f"{doc_id} v{version} was begun under another claim")
            if row.doc_epoch != doc.epoch:
                raise DocumentDeletedMeanwhile(f"{doc_id} was deleted while v{version} was being indexed")
            if version <= doc.current_version:
                raise Superseded(f"{doc_id} v{doc.current_version}, begun later, was published first")
            if doc.current_version:
                old = session.get(VersionRow, (kb, doc_id, doc.current_version))
                if old is not None and old.status == "ready":
                    old.status, old.retired_at = "replaced", now()
            row.status, row.pages, row.chunk_count, row.published_at = "ready", pages, chunks, now()
            row.timings = timings or {}
            doc.current_version, doc.status, doc.title, doc.source = version, "ready", title, row.source
            doc.acl_groups, doc.tags, doc.deleted_at = row.acl_groups, row.tags, None
            doc.origin = row.origin or doc.origin

    def fail(
        self,
        kb: str,
        doc_id: str,
        version: int,
        error: str,
        *,
        code: str = "failed",
        status: str = "failed",
        lease: Lease | None = None,
    ) -> None:
        """Record why an unpublished version was given up; LostJob when `lease` no longer holds its job
        (then whoever took the job over records it)."""
        with self.session() as session:
            if lease is not None:
                owned_claim(session, lease)
            row = session.get(VersionRow, (kb, doc_id, version))
            doc = session.get(DocumentRow, (kb, doc_id))
            if row is not None and row.status == "indexing":
                row.status, row.error, row.error_code, row.retired_at = status, error[:4000], code, now()
            if doc is not None and doc.current_version == 0 and doc.status == "pending":
                doc.status = "failed"

    def interrupt_job(self, session: Session, job_id: str, token: int, *, error: str) -> list[VersionRef]:
        """Within the caller's transaction: retire the versions a claim of a job had begun and not
        finished (its worker died or lost the claim); other claims of the job keep theirs. They are hidden
        at once, and their chunks go with the caller's rollback, or with the purge schedule if the caller
        dies too."""
        rows = session.scalars(
            select(VersionRow).where(
                VersionRow.job_id == job_id, VersionRow.job_token == token, VersionRow.status == "indexing"
            )
        ).all()
        for row in rows:
            row.status, row.error, row.error_code, row.retired_at = "interrupted", error[:4000], "interrupted", now()
        return [VersionRef(r.doc_id, r.version) for r in rows]

    def mark_deleted(self, kb: str, doc_id: str) -> bool:
        """Hide a document from readers at once; its chunks are purged when the grace period has passed."""
        with self.session() as session:
            doc = session.get(DocumentRow, (kb, doc_id), with_for_update=True)
            if doc is None:
                return False
            # Versions being indexed now were begun before the delete: none of them may publish.
            doc.epoch += 1
            if doc.status == "deleted":
                return False
            if doc.current_version:
                row = session.get(VersionRow, (kb, doc_id, doc.current_version))
                if row is not None and row.status == "ready":
                    row.status, row.retired_at = "deleted", now()
            doc.status, doc.deleted_at = "deleted", now()
            return True

    def mark_purged(self, kb: str, refs: list[VersionRef]) -> None:
        with self.session() as session:
            for ref in refs:
                row = session.get(VersionRow, (kb, ref.doc_id, ref.version))
                if row is not None:
                    row.purged = True

    # -- reads for the documents API ---------------------------------------------------------------
    def current_versions(self, kb: str) -> dict[str, VersionRow]:
        """The current version of every document of `kb` that has one, by document id (one query)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(VersionRow)
                .join(DocumentRow, (DocumentRow.kb == VersionRow.kb) & (DocumentRow.doc_id == VersionRow.doc_id))
                .where(VersionRow.kb == kb, VersionRow.version == DocumentRow.current_version)
            )
            return {row.doc_id: row for row in rows}

    def pending_access_groups(self, kb: str) -> dict[str, list[str]]:
        """The groups that unfinished access changes are giving documents of `kb`, by document id."""
        with self._sessions() as session:
            rows = session.execute(
                select(PendingAccessRow.doc_id, PendingAccessRow.acl_groups).where(PendingAccessRow.kb == kb)
            ).all()
        return {doc_id: list(groups or []) for doc_id, groups in rows}


def _ensure_knowledge_base(
    session: Session, name: str, *, description: str, default_groups: list[str]
) -> tuple[KnowledgeBaseRow, bool]:
    """The row of knowledge base `name`, inserted unless it exists, and whether this call inserted it.

    INSERT ... ON CONFLICT DO NOTHING rather than read-then-insert: two workers starting the first jobs
    of a new knowledge base at once would otherwise both insert, and one would fail on the primary key."""
    values = {"name": name, "description": description, "default_groups": default_groups, "created_at": now()}
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    result = session.execute(insert(KnowledgeBaseRow).values(**values).on_conflict_do_nothing())
    row = session.get(KnowledgeBaseRow, name, populate_existing=True)
    assert row is not None  # inserted now, or by whoever won the race
    return row, bool(result.rowcount)  # type: ignore[attr-defined]


def as_utc(moment: datetime) -> datetime:
    # SQLite returns naive datetimes even for timezone-aware columns.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _shown(origin: str) -> str:
    return origin.removeprefix("upload:") if origin.startswith("upload:") else origin


# PostgreSQL's text cannot hold NUL: a question, description or name with one failed there (a 500, or a
# lost answer record) while SQLite kept it. Every string bound on this engine (the registry, jobs, keys,
# audit, feedback) has U+FFFD in its place instead, on either database, so that both keep the same text
# and a lookup of a name with NUL finds nothing on both rather than failing on one.
_NUL, _REPLACEMENT = "\x00", "\ufffd"


def _without_nul(value: object) -> object:
    return value.replace(_NUL, _REPLACEMENT) if isinstance(value, str) and _NUL in value else value


def _row_without_nul(row: object) -> object:
    if isinstance(row, dict):
        return {k: _without_nul(v) for k, v in row.items()}
    if isinstance(row, (list, tuple)):
        return type(row)(_without_nul(v) for v in row)
    return row


def _has_nul(parameters: object) -> bool:
    if isinstance(parameters, dict):
        return any(isinstance(v, str) and _NUL in v for v in parameters.values())
    if isinstance(parameters, (list, tuple)):
        return any(_has_nul(v) if isinstance(v, (dict, list, tuple)) else isinstance(v, str) and _NUL in v
                   for v in parameters)  # fmt: skip
    return False


def _nul_replaced(
    _conn: Connection, _cursor: object, statement: str, parameters: object, _context: object, executemany: bool
) -> tuple[str, object]:
    if not _has_nul(parameters):
        return statement, parameters
    if executemany and isinstance(parameters, (list, tuple)):
        return statement, type(parameters)(_row_without_nul(row) for row in parameters)
    return statement, _row_without_nul(parameters)


def _sqlite_pragmas(connection: object, _record: object) -> None:
    cursor = connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # The registry's writers take the write lock as they begin (IMMEDIATE), so that what they read and what
    # they write are one atomic step. The sqlite3 module would begin only at the first INSERT or UPDATE,
    # after the reads; it sees the transaction open and leaves it to commit(). Other transactions (reads,
    # the keys and audit tables) keep the module's own behaviour.
    if connection.get_execution_options().get("kb_write", False):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
