"""Reranking by a separate service over the `/rerank` protocol that Text Embeddings Inference, vLLM and
Infinity serve, so that API processes load no cross-encoder.

Two wire formats exist: TEI's (`{"query", "texts"}` → `[{"index", "score"}]`) and the Cohere/Jina one
that vLLM and Infinity speak (`{"model", "query", "documents", "top_n"}` →
`{"results": [{"index", "relevance_score"}]}`). Scores are returned as probabilities in 0-1 like the
in-process cross-encoder's; a server that sends raw logits has them passed through a sigmoid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import httpx
from tenacity import Retrying, before_sleep_log, retry_if_exception_type, stop_after_attempt, wait_exponential

from core.protocols import RerankerUnavailable
from core.types import ScoredChunk

log = logging.getLogger(__name__)

RerankProtocol = Literal["tei", "cohere"]


class HTTPReranker:
    def __init__(
        self, base_url: str, *, model: str = "", protocol: RerankProtocol = "tei", api_key: str = "",
        timeout_s: float = 10.0, retries: int = 2, backoff_s: float = 0.3, max_chars: int = 8000,
    ) -> None:  # fmt: skip
        self.model_name = model or base_url
        self._url = base_url.rstrip("/") + "/rerank"
        self._model = model
        self._protocol = protocol
        self._max_chars = max_chars
        headers = {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "EMPTY" else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers)
        # Connection errors only: a timeout retried would multiply the wait the caller configured.
        self._retrying = Retrying(
            retry=retry_if_exception_type((httpx.ConnectError, httpx.RemoteProtocolError)),
            stop=stop_after_attempt(retries + 1),
            wait=wait_exponential(multiplier=backoff_s, max=2.0),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )

    def rerank(self, query: str, candidates: Sequence[ScoredChunk], top_k: int) -> list[ScoredChunk]:
        if not candidates:
            return []
        texts = [c.chunk.text[: self._max_chars] for c in candidates]
        try:
            response = self._retrying(self._client.post, self._url, json=self._request(query, texts))
            response.raise_for_status()
            scores = self._scores(response.json(), len(texts))
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise RerankerUnavailable(f"the rerank service at {self._url} failed: {exc}") from exc
        rescored = [
            ScoredChunk(chunk=c.chunk, score=s, score_kind="rerank") for c, s in zip(candidates, scores, strict=True)
        ]
        rescored.sort(key=lambda h: h.score, reverse=True)
        return rescored[:top_k]

    def _request(self, query: str, texts: list[str]) -> dict[str, Any]:
        if self._protocol == "tei":
            return {"query": query, "texts": texts, "raw_scores": False, "truncate": True}
        body: dict[str, Any] = {"query": query, "documents": texts, "top_n": len(texts)}
        if self._model:
            body["model"] = self._model
        return body

    def _scores(self, payload: Any, count: int) -> list[float]:
        items = payload if self._protocol == "tei" else payload["results"]
        key = "score" if self._protocol == "tei" else "relevance_score"
        scores: list[float | None] = [None] * count
        for item in items:
            scores[int(item["index"])] = float(item[key])
        if any(s is None for s in scores):
            raise ValueError(f"the service scored {sum(s is not None for s in scores)} of {count} passages")
        found = [float(s) for s in scores if s is not None]
        if any(not 0.0 <= s <= 1.0 for s in found):
            # Logits (a server started with raw scores): the relevance thresholds are set on probabilities.
            found = [1.0 / (1.0 + math.exp(-s)) for s in found]
        return found

    def close(self) -> None:
        self._client.close()
