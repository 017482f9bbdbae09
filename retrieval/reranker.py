"""Cross-encoder reranking (sentence-transformers CrossEncoder), loaded at start-up."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from core.protocols import RerankerUnavailable
from core.types import ScoredChunk
from retrieval.embedder import pick_device, resolve_model_location

log = logging.getLogger(__name__)


class CrossEncoderReranker:
    """Scores (query, passage) pairs jointly; the scores are probabilities (sigmoid) in 0-1."""

    def __init__(self, model: str, *, device: str = "auto", batch_size: int = 32, max_length: int = 512) -> None:
        from sentence_transformers import CrossEncoder

        self.model_name = model
        self._batch_size = batch_size
        location = resolve_model_location(model)
        log.info("loading reranker %s from %s", model, location)
        try:
            self._model: Any = CrossEncoder(location, device=pick_device(device), max_length=max_length)
        except (OSError, ValueError) as exc:
            raise RerankerUnavailable(f"reranker model {model!r} cannot be loaded: {exc}") from exc

    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        if not candidates:
            return []
        scores = self._model.predict(
            [(query, c.chunk.text) for c in candidates], batch_size=self._batch_size, show_progress_bar=False
        )
        rescored = [
            ScoredChunk(chunk=c.chunk, score=float(s), score_kind="rerank")
            for c, s in zip(candidates, scores.tolist(), strict=True)
        ]
        rescored.sort(key=lambda h: h.score, reverse=True)
        return rescored[:top_k]


def load_reranker(
    model: str, *, enabled: bool, device: str = "auto", batch_size: int = 32, max_length: int = 512
) -> CrossEncoderReranker | None:
    """The reranker, or None when it is turned off or its model is not available (logged, not hidden)."""
    if not enabled:
        log.info("reranker turned off in settings")
        return None
    try:
        return CrossEncoderReranker(model, device=device, batch_size=batch_size, max_length=max_length)
    except RerankerUnavailable as exc:
        log.warning("%s; answers are ranked without reranking (timings carry rerank_unavailable)", exc)
        return None
