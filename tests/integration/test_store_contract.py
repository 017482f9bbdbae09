"""One contract for MilvusStore, run against a Milvus Lite file and against a `milvus-lite server` URI
started here (the same client code reaches Milvus Standalone with `uri` + `token`)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymilvus import MilvusClient

from core.types import Chunk, SearchFilter, SearchMode
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.milvus_connect import LiteLayout, start_lite_server
from retrieval.store import MilvusStore, StoreError

pytestmark = pytest.mark.integration

ROWS = [
    ("leave.md", 1, 0, ["staff"], ["hr"], "Employees get 20 days of paid annual leave per year."),
    ("leave.md", 1, 1, ["staff"], ["hr"], "Unused annual leave can be carried over until March."),
    ("vpn.md", 1, 0, [], ["it"], "Reset a forgotten VPN password in the self-service portal."),
    ("pay.md", 1, 0, ["finance"], ["pay"], "Salary payments are made on the 25th of each month."),
    ("zh.md", 1, 0, [], ["hr"], "员工每年享有二十天带薪年假。"),
]


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="module", params=["lite-file", "lite-server"])
def client(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusClient]:
    folder = tmp_path_factory.mktemp(request.param)
    proc = None
    if request.param == "lite-file":
        client = MilvusClient(uri=str(folder / "milvus.db"))
    else:
        proc = start_lite_server(LiteLayout(data_dir=folder / "milvus.db", run_dir=folder / "run"))
        port = (folder / "run" / "milvus-lite.json").read_text().split('"port": ')[1].split(",")[0]
        client = MilvusClient(uri=f"http://127.0.0.1:{port}")
    yield client
    client.close()
    if proc is not None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def store(client: MilvusClient, embedder: SentenceTransformerEmbedder) -> MilvusStore:
    s = MilvusStore(client, dimension=embedder.dimension)
    chunks = [
        Chunk(chunk_id=Chunk.make_id(d, v, o), doc_id=d, version=v, ordinal=o, text=t, acl_groups=a, tags=g)
        for d, v, o, a, g, t in ROWS
    ]
    assert s.upsert("contract", chunks, embedder.embed([c.text for c in chunks], "passage")) == len(chunks)
    s.flush("contract")
    return s


def _docs(
    store: MilvusStore, embedder: SentenceTransformerEmbedder, q: str, mode: SearchMode, **flt: object
) -> list[str]:
    vector = None if mode == "bm25" else embedder.embed([q], "query")[0]
    hits = store.search("contract", q, vector, mode=mode, limit=10, flt=SearchFilter(**flt))  # type: ignore[arg-type]
    return [h.chunk.doc_id for h in hits]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_every_mode_ranks_the_matching_chunk_first(
    store: MilvusStore, embedder: SentenceTransformerEmbedder, mode: SearchMode
) -> None:
    assert _docs(store, embedder, "reset VPN password", mode)[0] == "vpn.md"


def test_chinese_keywords_match_through_jieba(store: MilvusStore, embedder: SentenceTransformerEmbedder) -> None:
    assert _docs(store, embedder, "带薪年假有几天", "bm25")[0] == "zh.md"


def test_a_query_of_stop_words_only_finds_nothing_by_keyword(
    store: MilvusStore, embedder: SentenceTransformerEmbedder
) -> None:
    assert _docs(store, embedder, "what is the", "bm25") == []


def test_filters_by_doc_tag_and_acl(store: MilvusStore, embedder: SentenceTransformerEmbedder) -> None:
    q = "leave salary password 年假"
    assert set(_docs(store, embedder, q, "hybrid", doc_ids=["pay.md"])) == {"pay.md"}
    assert set(_docs(store, embedder, q, "hybrid", tags=["hr"])) == {"leave.md", "zh.md"}
    assert set(_docs(store, embedder, q, "hybrid", acl_groups=[])) == {"vpn.md", "zh.md"}
    assert set(_docs(store, embedder, q, "hybrid", acl_groups=["finance"])) == {"vpn.md", "zh.md", "pay.md"}


def test_upsert_is_idempotent_and_delete_keeps_the_named_version(
    store: MilvusStore, embedder: SentenceTransformerEmbedder
) -> None:
    before = store.count("contract")
    text = "VPN passwords expire after 90 days."
    chunk = Chunk(chunk_id=Chunk.make_id("vpn.md", 2, 0), doc_id="vpn.md", version=2, text=text)
    vectors = embedder.embed([text], "passage")
    store.upsert("contract", [chunk], vectors)
    store.upsert("contract", [chunk], vectors)
    store.flush("contract")
    assert store.count("contract") == before + 1
    store.delete_document("contract", "vpn.md", keep_version=2)
    store.flush("contract")
    hits = store.search("contract", "VPN password", None, mode="bm25", limit=10, flt=SearchFilter(doc_ids=["vpn.md"]))
    assert [(h.chunk.doc_id, h.chunk.version) for h in hits] == [("vpn.md", 2)]


def test_bad_names_dimensions_and_missing_collections(
    store: MilvusStore, client: MilvusClient, embedder: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    with pytest.raises(StoreError):
        store.collection("bad-name; drop")
    assert store.search("never_created", "x", None, mode="bm25", limit=5, flt=SearchFilter()) == []
    other = MilvusStore(client, dimension=embedder.dimension + 1)
    with pytest.raises(StoreError, match="dimensional"):
        other.ensure_collection("contract")
