from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.types import Access, SearchFilter
from tests.embed_server import EmbedServer, running_embed_server

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

# Tests of retrieval itself read every document, and say so (there is no default access).
ALL = Access.everything()
EVERYTHING = SearchFilter(access=ALL)
SHARED_EVAL = ROOT.parent / "shared" / "eval"


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def shared_eval(*parts: str) -> Path:
    """A path under ../shared/eval (the evaluation data beside the checkout).

    When it is missing, the calling test fails under CI (CI=true: the data must be there, a skip would
    hide that nothing was checked) and is skipped, with the reason, on a developer's machine."""
    path = SHARED_EVAL.joinpath(*parts)
    if not path.exists():
        message = f"{path} is missing (shared evaluation data, expected beside the checkout in ../shared/eval)"
        if running_in_ci():
            pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
        pytest.skip(message)
    return path


# Models are offline here; a test must never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT sequence classifier with MiniLM's tokenizer: random weights, real loading code (the
    reranker contract and the rerank integration tests load it with CrossEncoderReranker)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from retrieval.embedder import resolve_model_location

    folder = tmp_path_factory.mktemp("tiny-ce")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_location("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=1, max_position_embeddings=512,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbedServer]:
    """The OpenAI-compatible test embeddings server (tests/embed_server.py, MiniLM) as a real process, shared
    by the Embedder contract run and the OpenAIEmbedder tests; stopped at the end of the session."""
    with running_embed_server(tmp_path_factory.mktemp("embed-server") / "server.log") as server:
        yield server


@pytest.fixture(autouse=True)
def _no_kb_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their own settings; a developer's KB_* variables must not leak in."""
    for key in list(os.environ):
        if key.startswith("KB_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A PostgreSQL server for the whole session (tests/postgres.py); skipped, or failed under CI, when
    PostgreSQL is not installed."""
    from tests.postgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def services() -> Iterator[object]:
    """PostgreSQL, Redis and a Milvus server URI for one test module (tests/services.py). Not shared by the
    session: a pymilvus connection left idle by an earlier module gets a GOAWAY ("too many pings") from the
    milvus-lite server, and pymilvus hands that broken shared connection to the next client of the same
    URI."""
    from tests.services import running_services

    with running_services() as running:
        yield running


@pytest.fixture(scope="module")
def recorded_spans() -> Iterator[object]:
    """Spans kept in memory: an SDK tracer provider installed for the process (OpenTelemetry allows one; a
    later module adds its exporter to it), the exporter shut at the end of the module so that later tests
    keep nothing. Tests clear it before what they check."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()
