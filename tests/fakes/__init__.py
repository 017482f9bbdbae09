"""In-memory fakes of the stage Protocols (core.protocols). tests/contracts runs each through the same
contract suite as the real implementation, so that unit tests built on them test what production does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.fakes.embedder import FakeEmbedder
from tests.fakes.generator import FakeGenerator, GeneratorCall
from tests.fakes.reranker import FakeReranker
from tests.fakes.store import FakeVectorStore, SearchCallRecord

if TYPE_CHECKING:  # mypy checks that each fake has its Protocol's structure
    from core.protocols import Embedder, Generator, Reranker, VectorStore

    _embedder: Embedder = FakeEmbedder()
    _store: VectorStore = FakeVectorStore()
    _reranker: Reranker = FakeReranker()
    _generator: Generator = FakeGenerator()

__all__ = ["FakeEmbedder", "FakeGenerator", "FakeReranker", "FakeVectorStore", "GeneratorCall", "SearchCallRecord"]
