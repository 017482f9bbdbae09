"""Version bookkeeping over the registry and the vector store: begin, publish, roll back, purge what is due.

A new version is begun in the registry (hidden from readers), its chunks are written, and `publish`
switches readers to it in one transaction. The version it replaces (or a deleted document's) is retired
at that moment and hidden at once; its chunks stay in the store for `purge_grace_s` so that a query that
started before the switch still finds what it began with, and are deleted by whichever worker next
purges what is due. Nothing here waits: purging is a schedule, not a sleep.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from core.protocols import VectorStore
from ingest.registry import Lease, LostJob, Registry, RetiredVersion, VersionRef, now

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Begun:
    """The outcome of `Versions.begin`: a new version to index, or the unchanged current one."""

    version: int
    # True when the file, its groups and its tags are those of the current version: nothing to index.
    unchanged: bool = False
    chunks: int = 0
    pages: int | None = None
    # The groups and tags the version carries, resolved (given, else the document's, else its kb's defaults).
    acl_groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


class Versions:
    def __init__(
        self,
        registry: Registry,
        store: VectorStore,
        *,
        purge_grace_s: float = 2.0,
        clock: Callable[[], datetime] = now,
    ) -> None:
        self._registry = registry
        self._store = store
        self.purge_grace_s = purge_grace_s
        self._clock = clock  # a seam for tests of the schedule; the registry stamps with real time

    def begin(
        self, kb: str, doc_id: str, path: Path, *, acl_groups: Sequence[str] | None = None,
        tags: Sequence[str] | None = None, job_id: str = "", lease: Lease | None = None, origin: str = "",
        replace: bool = True,
    ) -> Begun:  # fmt: skip
        """Start a new version of `doc_id` from `path`, unless it would be identical to the current one.

        Groups and tags not given (None) are the document's own, or a new document's kb defaults; an
        empty list given is meant (readable by admins only). Unless `replace`, a document of another
        `origin` under the same id is a DocIdConflict. Under a job, `lease` fences the version."""
        sha = sha256_file(path)
        groups, labels = self._registry.resolve_access(kb, doc_id, acl_groups, tags)
        current = self._registry.current_version(kb, doc_id)
        if (
            current is not None
            and current.sha256 == sha
            and list(current.acl_groups) == groups
            and list(current.tags) == labels
        ):
            return Begun(
                current.version, unchanged=True, chunks=current.chunk_count, pages=current.pages,
                acl_groups=tuple(groups), tags=tuple(labels),
            )  # fmt: skip
        version = self._registry.begin_version(
            kb, doc_id, title=path.stem, source=str(path), sha256=sha, size=path.stat().st_size,
            acl_groups=groups, tags=labels, job_id=job_id, lease=lease, origin=origin, replace=replace,
        )  # fmt: skip
        return Begun(version, acl_groups=tuple(groups), tags=tuple(labels))

    def publish(
        self, kb: str, doc_id: str, version: int, *, title: str, pages: int | None, chunks: int,
        timings: dict[str, float], lease: Lease | None = None,
    ) -> None:  # fmt: skip
        """The atomic switch: readers see `version` from now on; the version it replaces is retired.

        PublishRefused when the document was deleted meanwhile, a later version won, or the job is lost;
        the caller then rolls the version back (`rollback`, or `discard` for a lost job)."""
        self._registry.publish(
            kb, doc_id, version, title=title, pages=pages, chunks=chunks, timings=timings, lease=lease
        )

    def rollback(
        self, kb: str, doc_id: str, version: int, *, error: str, code: str, status: str = "failed",
        lease: Lease | None = None,
    ) -> None:  # fmt: skip
        """Remove whatever part of an unpublished `version` reached the store and record why it failed.

        Readers never saw it, so its chunks go at once rather than after the grace period. A worker that
        lost its job (LostJob, re-raised) still deletes the chunks it wrote: the version is its own."""
        try:
            self._registry.fail(kb, doc_id, version, error, code=code, status=status, lease=lease)
        except LostJob:
            self.discard(kb, [VersionRef(doc_id, version)])
            raise
        self.discard(kb, [VersionRef(doc_id, version)])

    def discard(self, kb: str, refs: Sequence[VersionRef]) -> None:
        """Delete the chunks of unpublished versions, already retired or given up, from the store."""
        if not refs:
            return
        for ref in refs:
            self._store.delete_version(kb, ref.doc_id, ref.version)
        self._registry.mark_purged(kb, list(refs))

    # -- the purge schedule -------------------------------------------------------------------------
    def purge(self, kb: str | None = None, *, grace_s: float | None = None) -> int:
        """Delete the chunks of retired versions whose grace period has passed (in `kb`, or everywhere).

        `grace_s` overrides the configured grace (0: everything retired, e.g. to reclaim space now).
        Returns how many versions were purged."""
        due = self._due(self._registry.retired(kb), self.purge_grace_s if grace_s is None else grace_s)
        self._purge(due)
        return len(due)

    def purge_scheduled(self) -> float | None:
        """What a worker's poll does: purge what is due everywhere, and say in how many seconds the next
        retired version comes due (None when nothing waits), from one read of the registry."""
        retired = self._registry.retired()
        due = self._due(retired, self.purge_grace_s)
        self._purge(due)
        return self._next_in([r for r in retired if r not in due])

    def next_purge_in(self, kb: str | None = None) -> float | None:
        """Seconds until the next retired version is due (0: due now); None when nothing waits."""
        return self._next_in(self._registry.retired(kb))

    def _purge(self, due: list[RetiredVersion]) -> None:
        by_kb: dict[str, list[VersionRef]] = {}
        for retired in due:
            by_kb.setdefault(retired.kb, []).append(retired.ref)
        for name, refs in by_kb.items():
            for ref in refs:
                self._store.delete_version(name, ref.doc_id, ref.version)
            self._store.flush(name)
            self._registry.mark_purged(name, refs)
            log.info("purged %d retired versions from %s", len(refs), name)

    def _next_in(self, retired: list[RetiredVersion]) -> float | None:
        if not retired:
            return None
        first = retired[0].retired_at  # oldest first
        if first is None:
            return 0.0
        return max(0.0, (first + timedelta(seconds=self.purge_grace_s) - self._clock()).total_seconds())

    def _due(self, retired: list[RetiredVersion], grace_s: float) -> list[RetiredVersion]:
        cutoff = self._clock() - timedelta(seconds=grace_s)
        return [r for r in retired if r.retired_at is None or r.retired_at <= cutoff]
