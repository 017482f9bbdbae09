"""kb's retrieval as LangChain components, for teams that build their own chains.

`KbRetriever` runs the full QueryPipeline (language-aware hybrid search, rerank, relevance threshold)
with a filter fixed when the retriever is built (knowledge base, ACL groups of the caller), so a chain's
input text can never widen what it may read. `KbEmbeddings` exposes kb's embedder (with its profile's
query/passage prefixes) as LangChain `Embeddings`.
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from core.protocols import Embedder
from core.types import Access, SearchFilter, SearchMode
from retrieval.pipeline import QueryPipeline


class KbEmbeddings(Embeddings):
    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed(texts, "passage")

    def embed_query(self, text: str) -> list[float]:
        return self._embedder.embed([text], "query")[0]


class KbRetriever(BaseRetriever):
    """Documents carry kb's metadata: doc_id, chunk_id, title, source, page, section, score, index."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    pipeline: QueryPipeline
    # The caller's access, set by the code that knows the caller, never from the query. Required: a
    # retriever built without it does not validate.
    access: Access
    kb: str = "default"
    top_k: int = 5
    mode: SearchMode | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        r = self.pipeline.search(
            query, kb=self.kb, top_k=self.top_k, mode=self.mode, flt=SearchFilter(access=self.access)
        )
        return [_document(s.index, s.text, s.hit.chunk.model_dump(), s.hit.score, s.hit.score_kind) for s in r.sources]


def _document(index: int, text: str, chunk: dict[str, Any], score: float, kind: str) -> Document:
    metadata = {k: chunk[k] for k in ("doc_id", "chunk_id", "version", "title", "source", "page", "section", "tags")}
    metadata.update(index=index, score=score, score_kind=kind, acl_groups=chunk["acl_groups"])
    return Document(page_content=text, metadata=metadata, id=chunk["chunk_id"])
