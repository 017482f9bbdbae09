"""The support scorer unit tests give AnswerService: the real one (it has no fake), with the configured thresholds."""

from __future__ import annotations

from app.settings import LLMSettings
from core.protocols import Embedder
from serving.support import SupportScorer


def support_scorer(embedder: Embedder | None) -> SupportScorer:
    llm = LLMSettings()
    return SupportScorer(embedder, threshold=llm.support_threshold, lexical_threshold=llm.lexical_support_threshold)
