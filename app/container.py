"""Builds kb's long-lived components from Settings. Each is built once, when first asked for;
servers ask for all of them at start-up (`warm_up`), the CLI only for what a command needs."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import jinja2

import serving.prompts
from app.answering import AnswerService
from app.settings import Settings
from ingest.chunking import StructuredChunker
from ingest.loaders import UnstructuredLoader
from ingest.pipeline import IngestPipeline
from ingest.registry import Registry
from retrieval.condense import Condenser
from retrieval.context import context_budget, llm_token_counter
from retrieval.embedder import SentenceTransformerEmbedder
from retrieval.milvus_connect import LiteLayout, open_client
from retrieval.pipeline import QueryPipeline, Thresholds
from retrieval.reranker import CrossEncoderReranker, load_reranker
from retrieval.store import MilvusStore
from serving.generator import OpenAIGenerator
from serving.prompts import PromptBook

log = logging.getLogger(__name__)


def lite_layout(settings: Settings) -> LiteLayout:
    return LiteLayout(data_dir=settings.home / "milvus.db", run_dir=settings.home / "run")


class Container:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)

    @cached_property
    def embedder(self) -> SentenceTransformerEmbedder:
        e = self.settings.embedding
        return SentenceTransformerEmbedder(
            e.model, profile=e.profile, device=e.device, batch_size=e.batch_size, max_seq_length=e.max_seq_length
        )

    @cached_property
    def store(self) -> MilvusStore:
        m = self.settings.milvus
        client = open_client(
            uri=m.uri, token=m.token.get_secret_value(), db_name=m.db_name, layout=lite_layout(self.settings)
        )
        return MilvusStore(
            client,
            dimension=self.embedder.dimension,
            collection_prefix=m.collection_prefix,
            analyzer=m.analyzer,
            hnsw_m=m.hnsw_m,
            hnsw_ef_construction=m.hnsw_ef_construction,
            search_ef=m.search_ef,
            rrf_k=self.settings.retrieval.rrf_k,
            fusion=self.settings.retrieval.fusion,
            dense_weight=self.settings.retrieval.dense_weight,
            stop_words=m.stop_words,
        )

    @cached_property
    def reranker(self) -> CrossEncoderReranker | None:
        r = self.settings.reranker
        return load_reranker(
            r.model, enabled=r.enabled, device=r.device, batch_size=r.batch_size, max_length=r.max_length
        )

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.settings.database_url)

    @cached_property
    def ingest(self) -> IngestPipeline:
        i = self.settings.ingest
        # Chunks may not exceed what the embedding model reads; the rest would be silently cut.
        chunk_tokens = min(i.chunk_tokens, self.embedder.max_seq_length - 8)
        overlap = min(i.chunk_overlap_tokens, chunk_tokens // 4)
        return IngestPipeline(
            loader=UnstructuredLoader(),
            chunker=StructuredChunker(self.embedder.count_tokens, chunk_tokens=chunk_tokens, overlap_tokens=overlap),
            embedder=self.embedder,
            store=self.store,
            registry=self.registry,
            batch_size=self.settings.embedding.batch_size,
            max_file_bytes=i.max_file_mb * 1024 * 1024,
        )

    @cached_property
    def query(self) -> QueryPipeline:
        r = self.settings.retrieval
        return QueryPipeline(
            embedder=self.embedder,
            store=self.store,
            default_mode=r.mode,
            candidates=r.candidates,
            context_tokens=context_budget(
                self.settings.llm.max_model_len, self.settings.llm.max_tokens, r.context_tokens
            ),
            reranker=self.reranker,
            rerank_candidates=self.settings.reranker.candidates,
            rerank_wanted=self.settings.reranker.enabled,
            thresholds=Thresholds(**r.min_relevance.model_dump()),
            count_tokens=llm_token_counter(self.settings.llm_model_path),
        )

    @cached_property
    def generator(self) -> OpenAIGenerator:
        llm = self.settings.llm
        return OpenAIGenerator(
            base_url=self.settings.llm_base_url,
            api_key=llm.api_key.get_secret_value(),
            model=llm.served_model_name,
            max_tokens=llm.max_tokens,
            temperature=llm.temperature,
            timeout_s=llm.timeout_s,
            retries=llm.connect_retries,
            backoff_s=llm.retry_backoff_s,
        )

    @cached_property
    def answers(self) -> AnswerService:
        return AnswerService(
            query=self.query,
            generator=self.generator,
            prompts=PromptBook(),
            top_k=self.settings.retrieval.top_k,
            citation_guard=self.settings.llm.citation_guard,
            condenser=self.condenser,
        )

    @cached_property
    def condenser(self) -> Condenser | None:
        if not self.settings.retrieval.condense:
            return None
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(Path(serving.prompts.__file__).parent)),
            autoescape=False,  # plain-text prompt
            undefined=jinja2.StrictUndefined,
        )
        return Condenser(self.generator, env.get_template("condense.j2"))

    def warm_up(self) -> None:
        """Load every model and open every connection now, not on the first request."""
        _ = self.embedder, self.store, self.reranker, self.registry, self.ingest, self.query, self.answers
        self.embedder.embed(["warm-up"], "query")
