"""The baseline of `kb bench retrieval`: the hybrid search a user would write with pymilvus directly,
on a client of their own, with the parameters kb's settings give its store (same collection, ef,
fusion, output fields). Nothing here goes through MilvusStore, so the gap to kb's numbers is what kb's
own code costs."""

from __future__ import annotations

from collections.abc import Sequence

from pymilvus import AnnSearchRequest, MilvusClient, RRFRanker, WeightedRanker

from app.container import lite_layout
from app.settings import Settings
from retrieval.milvus_connect import open_client

# What kb's hits carry; a user showing sources would ask for the same.
OUTPUT_FIELDS = [
    "chunk_id", "doc_id", "version", "ordinal", "text", "title", "source", "page",
    "section", "category", "acl_groups", "tags", "token_count",
]  # fmt: skip


class BareHybridSearch:
    def __init__(self, settings: Settings, collection: str) -> None:
        m = settings.milvus
        # A Milvus Lite data folder opened again in the same process shares its in-process server.
        self._client: MilvusClient = open_client(
            uri=m.uri, token=m.token.get_secret_value(), db_name=m.db_name, layout=lite_layout(settings)
        )
        self._collection = collection
        self._ef = m.search_ef
        r = settings.retrieval
        self._ranker = (
            RRFRanker(r.rrf_k)
            if r.fusion == "rrf"
            else WeightedRanker(r.dense_weight, 1.0 - r.dense_weight, norm_score=True)
        )

    def requests(self, query: str, vector: Sequence[float], limit: int) -> list[AnnSearchRequest]:
        dense = {"metric_type": "COSINE", "params": {"ef": max(self._ef, limit)}}
        sparse = {"metric_type": "BM25", "params": {}}
        return [
            AnnSearchRequest(data=[list(vector)], anns_field="dense", param=dense, limit=limit),
            AnnSearchRequest(data=[query], anns_field="sparse", param=sparse, limit=limit),
        ]

    def search(self, requests: list[AnnSearchRequest], limit: int) -> int:
        """Run the call; the number of hits (so the result is used, as a caller would)."""
        hits = self._client.hybrid_search(
            collection_name=self._collection, reqs=requests, ranker=self._ranker, limit=limit,
            output_fields=OUTPUT_FIELDS,
        )  # fmt: skip
        return len(hits[0])

    def close(self) -> None:
        self._client.close()
