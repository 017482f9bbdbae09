"""Groups and tags as properties of a document: resolved at ingest (given, else the document's own, else
its knowledge base's defaults), and changed in place, hidden from every reader until the chunks carry
them. Real SQLite registry; the in-memory store (its contract is tests/contracts/test_store_contract.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from core.types import Access, Chunk, SearchFilter
from ingest.access import DocumentAccess
from ingest.documents import DocumentNotFound, DocumentService
from ingest.jobs import JobStore
from ingest.labels import InvalidAccess
from ingest.registry import Registry, VersionRef
from ingest.versions import Begun, Versions
from tests.fakes import FakeVectorStore

KB = "kb"


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'kb.sqlite'}")


@pytest.fixture
def store() -> FakeVectorStore:
    return FakeVectorStore()


@pytest.fixture
def versions(registry: Registry, store: FakeVectorStore) -> Versions:
    return Versions(registry, store)


def index(
    versions: Versions, store: FakeVectorStore, path: Path, text: str, *, kb: str = KB,
    groups: Sequence[str] | None = None, tags: Sequence[str] | None = None,
) -> Begun:  # fmt: skip
    """What the pipeline does with a file: begin, write chunks with the resolved groups, publish."""
    path.write_text(text)
    begun = versions.begin(kb, path.name, path, acl_groups=groups, tags=tags)
    if begun.unchanged:
        return begun
    chunks = [
        Chunk(chunk_id=Chunk.make_id(path.name, begun.version, i), doc_id=path.name, version=begun.version, kb=kb,
              ordinal=i, text=f"{text} part {i}", acl_groups=list(begun.acl_groups), tags=list(begun.tags))
        for i in range(2)
    ]  # fmt: skip
    store.upsert(kb, chunks, [[1.0, 0.0]] * len(chunks))
    versions.publish(kb, path.name, begun.version, title="t", pages=None, chunks=len(chunks), timings={})
    return begun


def readable(registry: Registry, store: FakeVectorStore, access: Access, kb: str = KB) -> set[tuple[str, int]]:
    hidden = [(r.doc_id, r.version) for r in registry.hidden_versions(kb)]
    flt = SearchFilter(access=access, hidden_versions=hidden)
    return {
        (h.chunk.doc_id, h.chunk.version) for h in store.search(kb, "x", [1.0, 0.0], mode="dense", limit=50, flt=flt)
    }


def test_groups_not_given_are_the_documents_own_and_a_new_document_gets_its_kbs_defaults(
    registry: Registry, store: FakeVectorStore, versions: Versions, tmp_path: Path
) -> None:
    registry.create_knowledge_base(KB, default_groups=["staff"])
    doc = tmp_path / "a.md"
    assert index(versions, store, doc, "one").acl_groups == ("staff",)
    registry.update_knowledge_base(KB, default_groups=["everyone"])  # new documents only
    assert index(versions, store, doc, "two").acl_groups == ("staff",)
    given = index(versions, store, doc, "three", groups=["b"], tags=["hr"])
    assert (given.acl_groups, given.tags) == (("b",), ("hr",))
    kept = index(versions, store, doc, "four")
    assert (kept.version, kept.acl_groups, kept.tags) == (4, ("b",), ("hr",))
    # An empty list given is meant: readable by admins only.
    assert index(versions, store, doc, "five", groups=[]).acl_groups == ()
    assert index(versions, store, tmp_path / "new.md", "new").acl_groups == ("everyone",)
    assert {c.doc_id: c.acl_groups for c in store.chunks(KB) if c.version in (5, 1)} == {
        "a.md": [], "new.md": ["everyone"]
    }  # fmt: skip


def test_an_unchanged_file_is_compared_with_its_resolved_groups(
    registry: Registry, store: FakeVectorStore, versions: Versions, tmp_path: Path
) -> None:
    doc = tmp_path / "a.md"
    index(versions, store, doc, "same", groups=["b"], tags=["t"])
    again = versions.begin(KB, "a.md", doc)
    assert (again.unchanged, again.version, again.acl_groups, again.tags) == (True, 1, ("b",), ("t",))
    assert versions.begin(KB, "a.md", doc, acl_groups=["b"], tags=["t"]).unchanged
    assert not versions.begin(KB, "a.md", doc, acl_groups=["a"]).unchanged


def test_a_knowledge_base_first_seen_by_the_pipeline_has_no_default_groups(
    registry: Registry, store: FakeVectorStore, versions: Versions, tmp_path: Path
) -> None:
    assert registry.knowledge_base("fresh") is None
    assert index(versions, store, tmp_path / "a.md", "text", kb="fresh").acl_groups == ()
    made = registry.knowledge_base("fresh")
    assert made is not None and made.default_groups == []
    assert readable(registry, store, Access.groups(["a", "b"]), kb="fresh") == set()
    assert readable(registry, store, Access.everything(), kb="fresh") == {("a.md", 1)}


def test_a_job_remembers_whether_groups_were_given(registry: Registry, tmp_path: Path) -> None:
    jobs = JobStore(registry)
    service = DocumentService(registry=registry, jobs=jobs, default_groups=["employees"])
    doc = tmp_path / "a.md"
    doc.write_text("text")
    not_given = jobs.get(service.submit([doc], kb="newkb", uploads_dir=tmp_path / "up"))
    empty = jobs.get(service.submit([doc], kb="newkb", uploads_dir=tmp_path / "up", acl_groups=[], tags=[]))
    given = jobs.get(service.submit([doc], kb="newkb", uploads_dir=tmp_path / "up", acl_groups=["b"], tags=["x"]))
    assert not_given is not None and empty is not None and given is not None
    assert (not_given.job.acl_groups, not_given.job.tags) == (None, None)
    assert (empty.job.acl_groups, empty.job.tags) == ([], [])
    assert (given.job.acl_groups, given.job.tags) == (["b"], ["x"])
    # The knowledge base an ingest first names gets the configured default groups.
    made = registry.knowledge_base("newkb")
    assert made is not None and made.default_groups == ["employees"]
    with pytest.raises(InvalidAccess):
        service.submit([doc], kb="newkb", uploads_dir=tmp_path / "up", acl_groups=["bad group"])
    with pytest.raises(InvalidAccess):
        service.submit([doc], kb="bad-name", uploads_dir=tmp_path / "up")


def test_set_access_rewrites_the_chunks_then_publishes_the_groups(
    registry: Registry, store: FakeVectorStore, versions: Versions, tmp_path: Path
) -> None:
    doc = tmp_path / "a.md"
    index(versions, store, doc, "one", groups=["b"], tags=["old"])
    assert readable(registry, store, Access.groups(["b"])) == {("a.md", 1)}
    result = DocumentAccess(registry=registry, store=store).set(KB, "a.md", groups=["a"])
    assert (result.version, result.acl_groups, result.tags, result.chunks, result.pending) == (
        1, ["a"], ["old"], 2, False
    )  # fmt: skip
    assert readable(registry, store, Access.groups(["a"])) == {("a.md", 1)}
    assert readable(registry, store, Access.groups(["b"])) == set()
    assert {tuple(c.acl_groups) for c in store.chunks(KB)} == {("a",)}
    row = registry.document(KB, "a.md")
    assert row is not None and (row.acl_groups, row.tags) == (["a"], ["old"])
    assert registry.access_pending() == []
    # The version records what its chunks carry: the same file again, without groups, is unchanged.
    assert versions.begin(KB, "a.md", doc).unchanged
    retagged = DocumentAccess(registry=registry, store=store).set(KB, "a.md", tags=[])
    assert (retagged.acl_groups, retagged.tags) == (["a"], [])


def test_set_access_refuses_unknown_documents_and_bad_groups(
    registry: Registry, store: FakeVectorStore, versions: Versions, tmp_path: Path
) -> None:
    access = DocumentAccess(registry=registry, store=store)
    index(versions, store, tmp_path / "a.md", "one", groups=["b"])
    with pytest.raises(DocumentNotFound):
        access.set(KB, "never.md", groups=["a"])
    with pytest.raises(InvalidAccess):
        access.set(KB, "a.md", groups=["a b"])
    assert registry.mark_deleted(KB, "a.md")
    with pytest.raises(DocumentNotFound):
        access.set(KB, "a.md", groups=["a"])
    assert registry.access_pending() == []


class FailingStore(FakeVectorStore):
    """The process "dies" after the registry recorded the change and before any chunk was rewritten."""

    failures: int = 1

    def update_access(self, kb: str, doc_id: str, version: int, acl_groups: Sequence[str], tags: Sequence[str]) -> int:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("milvus went away")
        return super().update_access(kb, doc_id, version, acl_groups, tags)


def test_a_change_that_fails_part_way_keeps_the_document_hidden_until_repaired(
    registry: Registry, tmp_path: Path
) -> None:
    store = FailingStore()
    versions = Versions(registry, store)
    index(versions, store, tmp_path / "a.md", "one", groups=["b"])
    index(versions, store, tmp_path / "other.md", "other", groups=["b"])
    access = DocumentAccess(registry=registry, store=store)
    with pytest.raises(ConnectionError):
        access.set(KB, "a.md", groups=["a"])
    # Its chunks still say "b", so nobody may see it, not even unrestricted readers.
    assert registry.hidden_versions(KB) == [VersionRef("a.md", 1)]
    for who in (Access.groups(["a"]), Access.groups(["b"]), Access.everything()):
        assert ("a.md", 1) not in readable(registry, store, who)
    assert readable(registry, store, Access.groups(["b"])) == {("other.md", 1)}
    assert access.set(KB, "other.md", groups=["b", "c"]).pending is False  # others are not held up
    assert registry.access_pending(claimable=True) == [(KB, "a.md")]
    assert access.repair() == 1
    assert readable(registry, store, Access.groups(["a"])) == {("a.md", 1)}
    assert readable(registry, store, Access.groups(["b"])) == {("other.md", 1)}
    assert access.repair() == 0


def test_a_claim_is_not_taken_from_a_live_process_until_it_expires(
    registry: Registry, store: FakeVectorStore, versions: Versions, tmp_path: Path
) -> None:
    index(versions, store, tmp_path / "a.md", "one", groups=["b"])
    assert registry.request_access_change(KB, "a.md", acl_groups=["a"], tags=None) is not None
    held = registry.claim_access_change(KB, "a.md", lease_s=60)
    assert held is not None and held.acl_groups == ["a"]
    assert registry.claim_access_change(KB, "a.md", lease_s=60) is None
    access = DocumentAccess(registry=registry, store=store, wait_s=0.2)
    assert access.repair() == 0
    assert readable(registry, store, Access.everything()) == set()  # hidden while the other process works
    waited = access.set(KB, "a.md", groups=["c"])
    assert waited.pending and waited.acl_groups == ["c"]
    # The holder finishes an outdated request: not published, and the newest request is carried out next.
    assert store.update_access(KB, "a.md", 1, held.acl_groups, held.tags) == 2
    assert not registry.finish_access_change(held)
    assert access.repair() == 1
    assert readable(registry, store, Access.groups(["c"])) == {("a.md", 1)}
    assert readable(registry, store, Access.groups(["a"])) == set()


def test_an_expired_claim_is_repaired(
    registry: Registry, store: FakeVectorStore, versions: Versions, tmp_path: Path
) -> None:
    index(versions, store, tmp_path / "a.md", "one", groups=["b"])
    registry.request_access_change(KB, "a.md", acl_groups=["a"], tags=None)
    assert registry.claim_access_change(KB, "a.md", lease_s=0) is not None  # then the process died
    assert DocumentAccess(registry=registry, store=store).repair() == 1
    assert readable(registry, store, Access.groups(["a"])) == {("a.md", 1)}


def test_a_version_published_during_the_rewrite_is_rewritten_too(
    registry: Registry, store: FakeVectorStore, versions: Versions, tmp_path: Path
) -> None:
    doc = tmp_path / "a.md"
    index(versions, store, doc, "one", groups=["b"])

    class Racing(FakeVectorStore):
        def update_access(
            self, kb: str, doc_id: str, version: int, acl_groups: Sequence[str], tags: Sequence[str]
        ) -> int:
            if version == 1:  # an ingest of v2 with explicit old groups publishes meanwhile
                index(versions, store, doc, "two", groups=["b"])
            return store.update_access(kb, doc_id, version, acl_groups, tags)

    result = DocumentAccess(registry=registry, store=Racing()).set(KB, "a.md", groups=["a"])
    assert (result.version, result.acl_groups, result.pending) == (2, ["a"], False)
    assert readable(registry, store, Access.groups(["a"])) == {("a.md", 2)}
    assert readable(registry, store, Access.groups(["b"])) == set()
