"""Knowledge bases as admins manage them: the one service behind `kb kb ...` and /admin/kbs.

A knowledge base is a name (the boundary keys are granted by), a description, and the groups its new
documents get when an upload names none. Deleting one drops its collection first and forgets its
documents after: a failure in between leaves documents without chunks (found by nobody), never chunks
that a knowledge base created later under the same name would serve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from app.audit.trail import Action, Actor, AuditLog
from app.errors import Conflict, InvalidRequest, NotFound
from core.names import KB_NAME
from core.protocols import Embedder
from core.types import Chunk
from ingest.labels import InvalidAccess, check_labels
from ingest.registry import KnowledgeBase, Registry

if TYPE_CHECKING:  # pymilvus loads only where a collection is opened
    from retrieval.store import MilvusStore, Reindexed

MAX_DESCRIPTION = 2000


@dataclass(frozen=True)
class KbInfo:
    name: str
    description: str
    default_groups: list[str]
    documents: int
    created_at: datetime

    @classmethod
    def of(cls, kb: KnowledgeBase, documents: int) -> KbInfo:
        return cls(kb.name, kb.description, list(kb.default_groups), documents, kb.created_at)


@dataclass(frozen=True)
class KbDeleted:
    name: str
    documents: int


class KnowledgeBases:
    """Every change is recorded in the audit log with the actor the caller names (a key, or local-admin)."""

    def __init__(
        self, *, registry: Registry, drop_collection: Callable[[str], None], audit: AuditLog,
        default_groups: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self._registry = registry
        self._audit = audit
        # A callable, so that listing and editing never open the vector store.
        self._drop = drop_collection
        self._default_groups = list(default_groups)

    def list(self) -> list[KbInfo]:
        counts = self._registry.document_counts()
        return [KbInfo.of(kb, counts.get(kb.name, 0)) for kb in self._registry.knowledge_bases()]

    def get(self, name: str) -> KbInfo:
        kb = self._registry.knowledge_base(name)
        if kb is None:
            raise NotFound(f"no knowledge base {name!r}")
        return KbInfo.of(kb, self._registry.document_counts().get(name, 0))

    def create(
        self, name: str, *, actor: Actor, description: str = "", default_groups: Sequence[str] | None = None
    ) -> KbInfo:
        """A new knowledge base; default groups not given are the configured ones (security.default_groups)."""
        _check_name(name)
        groups = _groups(default_groups) if default_groups is not None else list(self._default_groups)
        kb, created = self._registry.create_knowledge_base(
            name, description=_description(description), default_groups=groups
        )
        if not created:
            raise Conflict(f"knowledge base {name!r} already exists")
        self._audit.record(
            Action.kb_create, actor=actor, kb=name, target=name, status=201,
            detail={"description": kb.description, "default_groups": groups},
        )  # fmt: skip
        return KbInfo.of(kb, 0)

    def update(
        self, name: str, *, actor: Actor, description: str | None = None, default_groups: Sequence[str] | None = None
    ) -> KbInfo:
        """Change the description and/or the default groups (documents already there keep theirs)."""
        kb = self._registry.update_knowledge_base(
            name,
            description=_description(description) if description is not None else None,
            default_groups=_groups(default_groups) if default_groups is not None else None,
        )
        if kb is None:
            raise NotFound(f"no knowledge base {name!r}")
        self._audit.record(
            Action.kb_update, actor=actor, kb=name, target=name,
            detail={"description": description, "default_groups": kb.default_groups},
        )  # fmt: skip
        return KbInfo.of(kb, self._registry.document_counts().get(name, 0))

    def delete(self, name: str, *, actor: Actor) -> KbDeleted:
        """Drop the knowledge base's collection, then forget it and its documents."""
        if not KB_NAME.match(name):
            raise NotFound(f"no knowledge base {name!r}")
        documents = self._registry.document_counts().get(name, 0)
        if self._registry.knowledge_base(name) is None and not self._registry.documents(name, include_deleted=True):
            raise NotFound(f"no knowledge base {name!r}")
        self._drop(name)
        self._registry.delete_knowledge_base(name)
        self._audit.record(Action.kb_delete, actor=actor, kb=name, target=name, detail={"documents": documents})
        return KbDeleted(name, documents)


class Reindexing:
    """`kb reindex`: a knowledge base re-embedded with the configured embedding model into a new collection
    while the old one keeps serving, then switched in one step (retrieval/store.py `MilvusStore.reindex`).

    Chunks are re-embedded as they are stored (their boundaries were sized by the old model's tokenizer;
    re-ingest to re-chunk). Refused while ingestion jobs or access changes of that knowledge base are
    pending: they write to the old collection and would be lost. Servers still running the old model must be
    restarted with the new one: the store refuses a collection embedded by another model."""

    def __init__(self, *, registry: Registry, store: Callable[[], MilvusStore], embedder: Callable[[], Embedder],
                 audit: AuditLog, text_of: Callable[[Chunk], str] = lambda c: c.text) -> None:  # fmt: skip
        self._registry = registry
        self._text_of = text_of  # what ingestion embeds of a chunk: the same goes into the new vectors
        # Callables: the embedding model loads only once the request is known to be valid.
        self._store = store
        self._embedder = embedder
        self._audit = audit

    def reindex(self, name: str, *, actor: Actor, progress: Callable[[int], None] = lambda _: None) -> Reindexed:
        if not KB_NAME.match(name) or self._registry.knowledge_base(name) is None:
            raise NotFound(f"no knowledge base {name!r}")
        busy = self._registry.busy(name)
        if busy:
            raise Conflict(
                f"knowledge base {name!r} is being changed ({', '.join(busy[:3])}): re-index once that is done"
            )
        store, embedder = self._store(), self._embedder()
        done = store.reindex(
            name, lambda texts: embedder.embed(texts, "passage"), progress=progress, text_of=self._text_of
        )
        self._audit.record(
            Action.kb_reindex, actor=actor, kb=name, target=name,
            detail={"chunks": done.chunks, "embedding_model": store.embedding_model,
                    "old_collection": done.old_collection, "new_collection": done.new_collection},
        )  # fmt: skip
        return done


def _check_name(name: str) -> None:
    if not KB_NAME.match(name):
        raise InvalidRequest(f"knowledge base name {name!r} must be 1-64 letters, digits or underscores")


def _groups(groups: Sequence[str]) -> list[str]:
    try:
        return check_labels(groups, "group")
    except InvalidAccess as exc:
        raise InvalidRequest(str(exc)) from None


def _description(text: str) -> str:
    if len(text) > MAX_DESCRIPTION:
        raise InvalidRequest(f"the description is longer than {MAX_DESCRIPTION} characters")
    return text
