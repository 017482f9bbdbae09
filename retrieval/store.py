"""Milvus collections for chunks: dense vectors + BM25 sparse vectors, hybrid search with RRF.

The same code runs against a Milvus Lite data folder, a `milvus-lite server` URI and Milvus
Standalone/Distributed (`uri` + `token`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pymilvus import (
    AnnSearchRequest,
    DataType,
    Function,
    FunctionType,
    MilvusClient,
    MilvusException,
    RRFRanker,
    WeightedRanker,
)

from core.chunk_context import store_text, stored_body
from core.text import detect_language, english_stop_words
from core.types import Access, Chunk, ScoredChunk, SearchFilter, SearchMode

log = logging.getLogger(__name__)

_NAME_OK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_OUTPUT_FIELDS = [
    "chunk_id", "doc_id", "version", "ordinal", "text", "title", "source", "page",
    "section", "category", "acl_groups", "tags", "token_count",
]  # fmt: skip
_MAX_TEXT = 65535
_PAGE = 512  # chunks read back and rewritten per round trip (update_access)
_NO_PAGE = -1  # Milvus scalars are not nullable everywhere; -1 stands for "format has no pages"

_MODEL_PROPERTY = "kb.embedding_model"
# A knowledge base's collections are named `_r<generation>_<its alias>`: a leading underscore, which the
# default prefix (and so no alias) has, keeps them apart from every knowledge base's name.
_GENERATION = re.compile(r"^_r(\d+)_")


def _generation_name(alias: str, generation: int) -> str:
    return f"_r{generation}_{alias}"


@dataclass(frozen=True)
class Reindexed:
    kb: str
    chunks: int
    old_collection: str
    new_collection: str


Fusion = Literal["weighted", "rrf"]
ScoreKind = Literal["cosine", "bm25", "rrf", "weighted"]


class StoreError(RuntimeError):
    pass


# The store's own maintenance (deleting and reading back a document's chunks) is not a caller's read.
_ALL = SearchFilter(access=Access.everything())


# Every read sees every write acknowledged before it (Milvus Standalone's default, Bounded, may serve a
# search from a snapshot a few seconds old: a document deleted or re-grouped could still be returned after
# the API said it was gone). Collections are created Strong, and each read asks for it too, so that a
# collection created by an older kb reads the same way.
CONSISTENCY = "Strong"


def analyzer_params(tokenizer: str, *, stop_words: bool) -> dict[str, Any]:
    """BM25 analyzer: lowercase, and optionally drop English stop words (Milvus does not expand
    `_english_` itself, so the list is spelled out)."""
    filters: list[Any] = ["lowercase"]
    if stop_words:
        filters.append({"type": "stop", "stop_words": list(english_stop_words())})
    return {"tokenizer": tokenizer, "filter": filters}


def literal(value: str) -> str:
    """A Milvus string literal for a value we did not write ourselves.

    JSON string syntax is what Milvus' expression parser accepts for double-quoted strings, so quotes,
    backslashes and brackets inside the value stay inside the literal.
    """
    if any(ord(c) < 32 for c in value):
        raise ValueError("control characters are not allowed in filter values")
    return json.dumps(value, ensure_ascii=False)


def build_filter(flt: SearchFilter, *, doc_id: str | None = None) -> str:
    """The Milvus boolean expression for typed filter values; user text never becomes syntax."""
    parts: list[str] = []
    doc_ids = list(flt.doc_ids) + ([doc_id] if doc_id else [])
    if doc_ids:
        parts.append(f"doc_id in [{', '.join(literal(d) for d in doc_ids)}]")
    if flt.tags:
        parts.append(f"array_contains_any(tags, [{', '.join(literal(t) for t in flt.tags)}])")
    if not flt.access.unrestricted:
        # Fail closed: a chunk without groups matches no caller's list, and a caller with no groups
        # matches nothing (the list is never empty: Access always carries the public group).
        groups = ", ".join(literal(g) for g in flt.access.member_of) or literal("")
        parts.append(f"array_contains_any(acl_groups, [{groups}])")
    if flt.hidden_versions:
        hidden = " or ".join(f"(doc_id == {literal(d)} and version == {int(v)})" for d, v in flt.hidden_versions)
        parts.append(f"not ({hidden})")
    return " and ".join(parts)


class MilvusStore:
    def __init__(
        self,
        client: MilvusClient,
        *,
        dimension: int,
        collection_prefix: str = "kb_",
        analyzer: str = "jieba",
        hnsw_m: int = 16,
        hnsw_ef_construction: int = 200,
        search_ef: int = 256,
        rrf_k: int = 60,
        fusion: Fusion = "weighted",
        dense_weight: float = 0.3,
        stop_words: bool = True,
        timeout_s: float | None = None,
        embedding_model: str = "",
        write_lock: Path | None = None,
        language_field: bool = False,
        bm25_header: bool = False,
    ) -> None:
        self._client = client
        # Languages embedded by different models (retrieval/routed_embedder.py): each chunk's `lang` says
        # whose vector space it is in, and dense search keeps to the query's.
        self._language_field = language_field
        self._output = [*_OUTPUT_FIELDS, "lang"] if language_field else _OUTPUT_FIELDS
        # BM25 matches each chunk's title and heading path too (core/chunk_context.py); reads return the
        # text alone either way, so the setting may change between writes.
        self._bm25_header = bm25_header
        # Recorded in each new collection's description and compared on opening: two models of the same
        # dimension (MiniLM and e5-small: 384) make vectors that mean nothing to each other.
        self.embedding_model = embedding_model
        # Milvus Lite takes one writer at a time: two worker processes inserting and flushing at once
        # break its segment sequence ("current_seq is monotonic"). Every kb process on the host then
        # takes this file lock around its writes; Milvus Standalone and Distributed need none.
        self._write_lock = write_lock
        # Every call to Milvus gives up after this long (gRPC deadline) instead of hanging a request.
        self._timeout = timeout_s
        self.dimension = dimension
        self._prefix = collection_prefix
        self._analyzer = analyzer
        self._hnsw = {"M": hnsw_m, "efConstruction": hnsw_ef_construction}
        self._ef = search_ef
        self._rrf_k = rrf_k
        self._fusion = fusion
        self._dense_weight = dense_weight
        self._stop_words = stop_words
        self._ready: set[str] = set()

    def ping(self, timeout_s: float) -> None:
        """Raise unless Milvus answers a cheap call (its collection names) within `timeout_s`."""
        self._client.list_collections(timeout=timeout_s)

    def collection(self, kb: str) -> str:
        name = f"{self._prefix}{kb}"
        if not _NAME_OK.match(name):
            raise StoreError(f"invalid knowledge base name {kb!r}: use letters, digits and underscores")
        return name

    # -- schema -------------------------------------------------------------------------------
    def ensure_collection(self, kb: str) -> str:
        name = self.collection(kb)
        if name in self._ready:
            return name
        if not self._client.has_collection(name, timeout=self._timeout):
            self._create_aliased(name)
        else:
            self._check_compatible(kb, name)
        self._load(name)
        self._ready.add(name)
        return name

    def _load(self, name: str, *, attempts: int = 20) -> None:
        # A collection another process has just created may not have its indexes yet: it loads once it has.
        for attempt in range(attempts):
            try:
                self._client.load_collection(name, timeout=self._timeout)
                return
            except MilvusException:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.25)

    def _create_aliased(self, alias: str) -> None:
        """The knowledge base's name is an alias of its collection, so that `reindex` can point it at
        another collection in one step while searches go on."""
        physical = _generation_name(alias, 1)
        try:
            self._create(physical)
        except MilvusException:
            # Several worker processes start on a new knowledge base at once: one creates it.
            if not self._client.has_collection(physical, timeout=self._timeout):
                raise
            log.info("collection %s was created by another process meanwhile", physical)
        try:
            self._client.create_alias(physical, alias, timeout=self._timeout)
        except MilvusException:
            # Another process created the knowledge base at the same moment: one alias won.
            if self._physical(alias) is None:
                raise

    def _physical(self, alias: str) -> str | None:
        """The collection behind a knowledge base's name (a collection made before aliases is its own); None
        when there is none."""
        try:
            return str(self._client.describe_alias(alias, timeout=self._timeout)["collection_name"])
        except MilvusException:
            return alias if self._client.has_collection(alias, timeout=self._timeout) else None

    def _check_compatible(self, kb: str, name: str) -> None:
        info = self._client.describe_collection(name, timeout=self._timeout)
        # Absent from a collection made before models were recorded: only its dimension can be checked.
        made_by = str((info.get("properties") or {}).get(_MODEL_PROPERTY) or "")
        if made_by and self.embedding_model and made_by != self.embedding_model:
            raise StoreError(
                f"collection {name} was embedded with {made_by} but the configured embedding model is "
                f"{self.embedding_model}: configure that model again, or re-embed the knowledge base with "
                f"`kb reindex --kb {kb}`"
            )
        names = {field.get("name") for field in info.get("fields", [])}
        if "category" not in names:
            raise StoreError(
                f"collection {name} was made by an older kb (no category field): re-index into a new KB_HOME"
            )
        if self._language_field and "lang" not in names:
            raise StoreError(
                f"collection {name} records no chunk languages, which routing languages to embedding models "
                f"needs: re-embed it with `kb reindex --kb {kb}`"
            )
        for field in info.get("fields", []):
            if field.get("name") == "dense":
                dim = int(field.get("params", {}).get("dim", self.dimension))
                if dim != self.dimension:
                    raise StoreError(
                        f"collection {name} holds {dim}-dimensional vectors but the embedding model "
                        f"makes {self.dimension}: re-index into a new KB_HOME or another collection prefix"
                    )

    def _create(self, name: str) -> None:
        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=512)
        schema.add_field("version", DataType.INT64)
        schema.add_field("ordinal", DataType.INT64)
        schema.add_field(
            "text",
            DataType.VARCHAR,
            max_length=_MAX_TEXT,
            enable_analyzer=True,
            analyzer_params=analyzer_params(self._analyzer, stop_words=self._stop_words),
        )
        schema.add_field("title", DataType.VARCHAR, max_length=1024)
        schema.add_field("source", DataType.VARCHAR, max_length=2048)
        schema.add_field("page", DataType.INT64)
        schema.add_field("section", DataType.VARCHAR, max_length=2048)
        schema.add_field("category", DataType.VARCHAR, max_length=64)
        schema.add_field("acl_groups", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=256, max_length=256)
        schema.add_field("tags", DataType.ARRAY, element_type=DataType.VARCHAR, max_capacity=64, max_length=256)
        schema.add_field("token_count", DataType.INT64)
        if self._language_field:
            schema.add_field("lang", DataType.VARCHAR, max_length=8)
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=self.dimension)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(
                name="text_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["text"],
                output_field_names=["sparse"],
            )
        )
        index = self._client.prepare_index_params()
        index.add_index(field_name="dense", index_type="HNSW", metric_type="COSINE", params=self._hnsw)
        index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        with self._writing():
            self._client.create_collection(
                name, schema=schema, index_params=index, consistency_level=CONSISTENCY, timeout=self._timeout,
                # A property, not the description: Milvus Lite keeps properties but drops descriptions.
                properties={_MODEL_PROPERTY: self.embedding_model},
            )  # fmt: skip
        log.info("created collection %s (dim %d, analyzer %s)", name, self.dimension, self._analyzer)

    # -- writes -------------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[None]:
        if self._write_lock is None:
            yield
            return
        self._write_lock.parent.mkdir(parents=True, exist_ok=True)
        with self._write_lock.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _rows(self, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
        rows = [
            {
                "chunk_id": c.chunk_id,
                "doc_id": c.doc_id,
                "version": c.version,
                "ordinal": c.ordinal,
                "text": store_text(c, header=self._bm25_header)[:_MAX_TEXT],
                "title": c.title[:1024],
                "source": c.source[:2048],
                "page": c.page if c.page is not None else _NO_PAGE,
                "section": c.section[:2048],
                "category": c.category[:64],
                "acl_groups": c.acl_groups,
                "tags": c.tags,
                "token_count": c.token_count,
                "dense": list(v),
            }
            for c, v in zip(chunks, vectors, strict=True)
        ]
        if self._language_field:
            for row, c in zip(rows, chunks, strict=True):
                # A chunk written without one was embedded from its text, which the embedder routed by
                # this same detection.
                row["lang"] = (c.language or detect_language(c.text))[:8]
        return rows

    def upsert(self, kb: str, chunks: Sequence[Chunk], vectors: Sequence[Sequence[float]]) -> int:
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        if not chunks:
            return 0
        name = self.ensure_collection(kb)
        rows = self._rows(chunks, vectors)
        with self._writing():
            self._client.upsert(name, rows, timeout=self._timeout)
        return len(rows)

    def flush(self, kb: str) -> None:
        # Milvus Lite rebuilds the BM25 index on every search until the segment is flushed.
        name = self.ensure_collection(kb)
        with self._writing():
            self._client.flush(name, timeout=self._timeout)

    def delete_document(self, kb: str, doc_id: str, *, keep_version: int | None = None) -> None:
        name = self.ensure_collection(kb)
        expr = build_filter(_ALL, doc_id=doc_id)
        if keep_version is not None:
            expr += f" and version != {int(keep_version)}"
        with self._writing():
            self._client.delete(name, filter=expr, timeout=self._timeout)

    def delete_version(self, kb: str, doc_id: str, version: int) -> None:
        name = self.ensure_collection(kb)
        with self._writing():
            self._client.delete(
                name,
                filter=f"{build_filter(_ALL, doc_id=doc_id)} and version == {int(version)}",
                timeout=self._timeout,
            )

    def update_access(self, kb: str, doc_id: str, version: int, acl_groups: Sequence[str], tags: Sequence[str]) -> int:
        """Give every chunk of one version new groups and tags without embedding anything again.

        Milvus cannot update a field in place: each chunk is read back whole (its dense vector too) and
        upserted. The BM25 vector is the text_bm25 function's output, so the upsert recomputes it. The ids
        are listed first and the chunks rewritten by id, so that the rewrite never pages through rows it is
        changing; a document of any size goes in batches."""
        name = self.collection(kb)
        if name not in self._ready and not self._client.has_collection(name):
            return 0
        self.ensure_collection(kb)
        expr = f"{build_filter(_ALL, doc_id=doc_id)} and version == {int(version)}"
        ids: list[str] = []
        pages = self._client.query_iterator(
            name, batch_size=_PAGE, filter=expr, output_fields=["chunk_id"], consistency_level=CONSISTENCY
        )
        try:
            while batch := pages.next():
                ids.extend(str(row["chunk_id"]) for row in batch)
        finally:
            pages.close()
        groups, labels = list(acl_groups), list(tags)
        for start in range(0, len(ids), _PAGE):
            rows = self._client.get(name, ids=ids[start : start + _PAGE], output_fields=[*self._output, "dense"])
            with self._writing():
                self._client.upsert(
                    name,
                    [
                        {**{f: row[f] for f in self._output}, "dense": [float(x) for x in row["dense"]],
                         "acl_groups": groups, "tags": labels}
                        for row in rows
                    ],
                )  # fmt: skip
        with self._writing():
            self._client.flush(name)
        return len(ids)

    def count(self, kb: str) -> int:
        name = self.ensure_collection(kb)
        rows = self._client.query(
            name, filter="", output_fields=["count(*)"], consistency_level=CONSISTENCY, timeout=self._timeout
        )
        return int(rows[0]["count(*)"]) if rows else 0

    # -- reads --------------------------------------------------------------------------------
    def document_chunks(self, kb: str, doc_id: str, *, limit: int = 16384) -> list[Chunk]:
        """Every stored chunk of a document, all versions, in version then reading order (admin views, tests)."""
        name = self.collection(kb)
        if name not in self._ready and not self._client.has_collection(name, timeout=self._timeout):
            return []
        self.ensure_collection(kb)
        rows = self._client.query(
            name,
            filter=build_filter(_ALL, doc_id=doc_id),
            output_fields=self._output,
            limit=limit,
            consistency_level=CONSISTENCY,
            timeout=self._timeout,
        )
        chunks = [self._scored({"entity": row, "distance": 0.0}, "cosine", kb).chunk for row in rows]
        return sorted(chunks, key=lambda c: (c.version, c.ordinal))

    def chunks_at(
        self, kb: str, doc_id: str, version: int, ordinals: Sequence[int], *, flt: SearchFilter
    ) -> list[Chunk]:
        name = self.collection(kb)
        if not ordinals or (name not in self._ready and not self._client.has_collection(name, timeout=self._timeout)):
            return []
        self.ensure_collection(kb)
        positions = ", ".join(str(int(o)) for o in ordinals)
        expr = f"{build_filter(flt, doc_id=doc_id)} and version == {int(version)} and ordinal in [{positions}]"
        rows = self._client.query(
            name, filter=expr, output_fields=_OUTPUT_FIELDS, limit=len(ordinals), consistency_level=CONSISTENCY,
            timeout=self._timeout,
        )  # fmt: skip
        return sorted(
            (self._scored({"entity": r, "distance": 0.0}, "cosine", kb).chunk for r in rows), key=lambda c: c.ordinal
        )

    def search(
        self,
        kb: str,
        query: str,
        vector: Sequence[float] | None,
        *,
        mode: SearchMode,
        limit: int,
        flt: SearchFilter,
    ) -> list[ScoredChunk]:
        name = self.collection(kb)
        if name not in self._ready and not self._client.has_collection(name, timeout=self._timeout):
            return []
        self.ensure_collection(kb)
        if mode in ("dense", "hybrid") and vector is None:
            raise ValueError(f"mode {mode} needs a query vector")
        expr = build_filter(flt)
        dense_expr = expr
        if self._language_field and flt.dense_language:
            own = f"lang == {literal(flt.dense_language)}"
            dense_expr = f"({expr}) and {own}" if expr else own
        dense_params = {"metric_type": "COSINE", "params": {"ef": max(self._ef, limit)}}
        sparse_params: dict[str, Any] = {"metric_type": "BM25", "params": {}}
        common = {
            "collection_name": name, "limit": limit, "output_fields": self._output, "timeout": self._timeout,
            "consistency_level": CONSISTENCY,
        }  # fmt: skip
        kind: ScoreKind
        if mode == "dense":
            assert vector is not None
            kind = "cosine"
            hits = self._client.search(
                **common, data=[list(vector)], anns_field="dense", filter=dense_expr, search_params=dense_params
            )
        elif mode == "bm25":
            kind = "bm25"
            hits = self._client.search(
                **common, data=[query], anns_field="sparse", filter=expr, search_params=sparse_params
            )
        else:
            assert vector is not None
            requests = [
                AnnSearchRequest(
                    data=[list(vector)], anns_field="dense", param=dense_params, limit=limit, expr=dense_expr
                ),
                AnnSearchRequest(data=[query], anns_field="sparse", param=sparse_params, limit=limit, expr=expr),
            ]
            ranker, kind = self._ranker()
            hits = self._client.hybrid_search(**common, reqs=requests, ranker=ranker)
        return [self._scored(h, kind, kb) for h in hits[0]]

    def _ranker(self) -> tuple[RRFRanker | WeightedRanker, ScoreKind]:
        if self._fusion == "rrf":
            return RRFRanker(self._rrf_k), "rrf"
        # norm_score maps each side's scores to 0-1 first, so that cosine and BM25 can be weighed.
        return WeightedRanker(self._dense_weight, 1.0 - self._dense_weight, norm_score=True), "weighted"

    def best_cosine(self, kb: str, vector: Sequence[float], chunk_ids: Sequence[str]) -> float | None:
        """The highest cosine similarity between the query vector and these chunks' stored vectors.

        Fused hybrid scores say nothing about absolute relevance; this is what the relevance threshold
        compares for hybrid hits."""
        if not chunk_ids:
            return None
        rows = self._client.get(
            self.collection(kb), ids=list(chunk_ids), output_fields=["dense"], timeout=self._timeout
        )
        q_norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        best: float | None = None
        for row in rows:
            d = [float(x) for x in row["dense"]]
            d_norm = math.sqrt(sum(x * x for x in d)) or 1.0
            cos = sum(a * b for a, b in zip(vector, d, strict=False)) / (q_norm * d_norm)
            best = cos if best is None else max(best, cos)
        return best

    @staticmethod
    def _scored(hit: Any, kind: ScoreKind, kb: str) -> ScoredChunk:
        entity = hit.get("entity", hit)
        page = entity.get("page")
        chunk = Chunk(
            chunk_id=str(entity.get("chunk_id", hit.get("id"))),
            doc_id=entity["doc_id"],
            version=int(entity["version"]),
            kb=kb,  # not a stored field: the collection is the knowledge base
            ordinal=int(entity["ordinal"]),
            text=stored_body(entity["text"]),
            title=entity["title"],
            source=entity["source"],
            page=None if page is None or int(page) == _NO_PAGE else int(page),
            section=entity["section"],
            category=str(entity.get("category") or ""),
            acl_groups=list(entity.get("acl_groups") or []),
            tags=list(entity.get("tags") or []),
            token_count=int(entity["token_count"]),
            language=str(entity.get("lang") or ""),
        )
        return ScoredChunk(chunk=chunk, score=float(hit["distance"]), score_kind=kind)

    def close(self) -> None:
        self._client.close()

    def drop(self, kb: str) -> None:
        name = self.collection(kb)
        physical = self._physical(name)
        if physical is not None and physical != name:
            self._client.drop_alias(name, timeout=self._timeout)
        if physical is not None:
            self._client.drop_collection(physical, timeout=self._timeout)
        self._ready.discard(name)

    # -- re-embedding -------------------------------------------------------------------------
    def reindex(
        self,
        kb: str,
        embed: Callable[[Sequence[str]], list[list[float]]],
        *,
        batch: int = 256,
        progress: Callable[[int], None] = lambda _: None,
        text_of: Callable[[Chunk], str] = lambda c: c.text,
    ) -> Reindexed:
        """Every chunk of `kb`, re-embedded by `embed` into a new collection made for this store's model;
        then the knowledge base's name is pointed at it in one alias change and the old collection dropped.
        Until that change, searches are served by the old collection as before.

        The old collection is read as it is (its model may differ from this store's: that is the point).
        Chunks written to it while this runs after their page was copied are not carried over: the caller
        makes sure no ingestion runs for `kb` meanwhile. `text_of`: what is embedded of each chunk (the
        ingestion pipeline's choice: with or without its header)."""
        alias = self.collection(kb)
        old = self._physical(alias)
        if old is None:
            raise StoreError(f"knowledge base {kb!r} has no collection to re-index")
        match = _GENERATION.match(old)
        new = _generation_name(alias, int(match.group(1)) + 1 if match else 1)
        if self._client.has_collection(new, timeout=self._timeout):
            self._client.drop_collection(new, timeout=self._timeout)  # left by an interrupted re-index
        self._create(new)
        self._client.load_collection(new, timeout=self._timeout)
        copied = 0
        try:
            pages = self._client.query_iterator(
                old, batch_size=batch, filter="", output_fields=_OUTPUT_FIELDS, consistency_level=CONSISTENCY,
                timeout=self._timeout,
            )  # fmt: skip
            try:
                while rows := pages.next():
                    chunks = [self._scored({"entity": row, "distance": 0.0}, "cosine", kb).chunk for row in rows]
                    texts = [text_of(c) for c in chunks]
                    # The old collection may record no languages: the text embedded decides, as at ingestion.
                    chunks = [
                        c.model_copy(update={"language": detect_language(t)})
                        for c, t in zip(chunks, texts, strict=True)
                    ]
                    vectors = embed(texts)
                    with self._writing():
                        self._client.upsert(new, self._rows(chunks, vectors), timeout=self._timeout)
                    copied += len(chunks)
                    progress(copied)
            finally:
                pages.close()
            with self._writing():
                self._client.flush(new, timeout=self._timeout)
        except BaseException:
            self._client.drop_collection(new, timeout=self._timeout)
            raise
        if old == alias:
            # A collection made before aliases holds the name itself: it must go before the name can point
            # elsewhere, so searches find no collection for a moment (they answer with no hits).
            self._client.drop_collection(old, timeout=self._timeout)
            self._client.create_alias(new, alias, timeout=self._timeout)
        else:
            self._client.alter_alias(new, alias, timeout=self._timeout)
            self._client.drop_collection(old, timeout=self._timeout)
        self._ready.discard(alias)
        log.info("re-indexed %s: %d chunks from %s into %s (%s)", kb, copied, old, new, self.embedding_model)
        return Reindexed(kb=kb, chunks=copied, old_collection=old, new_collection=new)
