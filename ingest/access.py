"""Changing who may read a document, without embedding it again, and without a moment when the wrong
people can.

A change is recorded first (`Registry.request_access_change`), and from that commit on the document is
hidden from every reader. The process that claims it rewrites the chunks of the current version with the
new groups and tags (`VectorStore.update_access`), then publishes them and shows the document again in
one transaction. A process that dies in between leaves the document hidden, never readable under the
old groups; its claim expires and a worker's poll (`repair`) finishes the change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.protocols import VectorStore
from ingest.documents import DocumentNotFound
from ingest.labels import check_labels
from ingest.registry import AccessChange, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AccessResult:
    kb: str
    doc_id: str
    version: int
    acl_groups: list[str]
    tags: list[str]
    # Chunks rewritten by this call (0 when another process finished the change).
    chunks: int
    # True when the change is still under way elsewhere (another process holds it): the document stays
    # hidden until that process, or a worker's repair pass, finishes it.
    pending: bool = False


class DocumentAccess:
    def __init__(
        self,
        *,
        registry: Registry,
        store: VectorStore,
        lease_s: float = 120.0,
        wait_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._store = store
        # How long a claim protects a rewrite under way; a process that dies holding one delays the
        # repair by this much at most.
        self._lease_s = lease_s
        self._wait_s = wait_s
        self._clock = clock

    def set(
        self, kb: str, doc_id: str, *, groups: Sequence[str] | None = None, tags: Sequence[str] | None = None
    ) -> AccessResult:
        """Give a document new groups and/or tags (None: keep). Returns once searches see them, or with
        `pending` when another process is finishing the change (the document is hidden meanwhile)."""
        wanted_groups = check_labels(groups, "group") if groups is not None else None
        wanted_tags = check_labels(tags, "tag") if tags is not None else None
        change = self._registry.request_access_change(kb, doc_id, acl_groups=wanted_groups, tags=wanted_tags)
        if change is None:
            raise DocumentNotFound(f"no indexed document {doc_id!r} in knowledge base {kb!r}")
        deadline = self._clock() + self._wait_s
        while True:
            done = self.apply(kb, doc_id)
            if (kb, doc_id) not in self._registry.access_pending(kb):
                return done or AccessResult(kb, doc_id, change.version, change.acl_groups, change.tags, 0)
            if self._clock() > deadline:
                return AccessResult(kb, doc_id, change.version, change.acl_groups, change.tags, 0, pending=True)
            time.sleep(0.05)  # another process holds the claim; it picks up this request when it finishes

    def apply(self, kb: str, doc_id: str) -> AccessResult | None:
        """Claim the pending change of one document and carry it out, again for as long as newer requests or
        newly published versions arrive meanwhile; None when there was nothing this process could claim.

        A failing store releases the claim and raises: the document stays hidden, and the next repair
        pass tries again."""
        total = 0
        last: AccessChange | None = None
        while (change := self._registry.claim_access_change(kb, doc_id, lease_s=self._lease_s)) is not None:
            try:
                total += self._store.update_access(kb, doc_id, change.version, change.acl_groups, change.tags)
            except BaseException:
                self._registry.release_access_change(kb, doc_id)
                raise
            last = change
            if self._registry.finish_access_change(change):
                log.info("%s/%s v%d: groups %s, tags %s", kb, doc_id, change.version, change.acl_groups, change.tags)
                break
        if last is None:
            return None
        return AccessResult(kb, doc_id, last.version, last.acl_groups, last.tags, total)

    def repair(self) -> int:
        """Finish the changes whose process died (or whose store failed) part-way; how many were finished.
        One that fails again stays hidden and is retried at the next pass."""
        finished = 0
        for kb, doc_id in self._registry.access_pending(claimable=True):
            try:
                if self.apply(kb, doc_id) is not None:
                    finished += 1
            except Exception:
                log.warning("finishing the access change of %s/%s failed", kb, doc_id, exc_info=True)
        return finished
