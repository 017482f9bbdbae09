"""The plain LangChain recipe a team would otherwise pick, as the baseline `kb eval` and `kb bench`
report beside kb: a langchain-milvus vector store with the same embedding model, dense only, default
index and search settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from langchain_milvus import Milvus

from retrieval.embedder import ProfiledEmbedder
from retrieval.langchain_retriever import KbEmbeddings


class LangChainBaseline:
    def __init__(self, embedder: ProfiledEmbedder, db_file: Path, collection: str = "baseline") -> None:
        self._store = Milvus(
            embedding_function=KbEmbeddings(embedder),
            collection_name=collection,
            connection_args={"uri": str(db_file)},
            drop_old=True,
            auto_id=True,
        )

    def add(self, texts: Sequence[str], vectors: np.ndarray, doc_ids: Sequence[str], batch: int = 1000) -> None:
        # Precomputed vectors of the same model (add_embeddings) instead of add_texts: identical index,
        # without embedding the corpus twice.
        for start in range(0, len(texts), batch):
            end = start + batch
            self._store.add_embeddings(
                texts=list(texts[start:end]),
                embeddings=vectors[start:end].tolist(),
                metadatas=[{"doc_id": d} for d in doc_ids[start:end]],
            )
        # Sealed and indexed, as a long-running deployment would have it; an unflushed Lite collection
        # is searched by brute force and would make the baseline look slower than it is.
        self._store.client.flush(self._store.collection_name)

    def search(self, query: str, k: int) -> list[str]:
        return [str(doc.metadata["doc_id"]) for doc in self._store.similarity_search(query, k=k)]

    def close(self) -> None:
        self._store.client.close()
