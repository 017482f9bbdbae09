"""Embeddings from an OpenAI-compatible endpoint (Text Embeddings Inference, vLLM, Infinity, OpenAI).

Production runs the embedding model as its own service so that API processes stay small: this backend
holds no model, only an HTTP client and (optionally) the model's tokenizer for counting tokens. It batches,
retries and times out like serving/generator.py.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

from openai import APIConnectionError, APIError, APIStatusError, OpenAI, Timeout
from tenacity import (
    Retrying,
)

from core.openai_retry import retry_policy
from core.protocols import EmbedderUnavailable
from core.text import is_wide
from core.types import TextKind
from retrieval.embedder import PROFILES, ProfileLanguages, infer_profile, resolve_model_location

log = logging.getLogger(__name__)

# Embedded once at start-up to learn the vector size the collection must have.
_PROBE = "dimension probe"


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper estimate: one token per CJK character, one per three other characters.

    Used only when no tokenizer for the served model is available here. Subword tokenizers give about one
    token per four characters of English and about one per Han character, so this over-counts: chunks
    come out somewhat smaller than `max_seq_length` rather than longer, and the server never silently
    cuts the end of a chunk off."""
    wide = sum(1 for char in text if is_wide(char))
    return wide + math.ceil((len(text) - wide) / 3)


class _TokenizerCounter:
    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        # Hugging Face fast tokenizers keep truncation/padding state on the shared object (see
        # SentenceTransformerEmbedder.embed); the chunker may count from several threads.
        self._lock = threading.Lock()

    def __call__(self, text: str) -> int:
        with self._lock:
            return len(self._tokenizer.encode(text, add_special_tokens=False))


def load_token_counter(tokenizer: str, model: str) -> tuple[Callable[[str], int], str]:
    """(counter, description). An explicit `tokenizer` must load; without one the model's own tokenizer is
    used if it is on this machine (never downloaded for this), else `estimate_tokens`."""
    from transformers import AutoTokenizer

    if tokenizer:
        try:
            loaded = AutoTokenizer.from_pretrained(resolve_model_location(tokenizer))
        except Exception as exc:  # any loading failure gets the same clear message
            raise ValueError(f"embedding tokenizer {tokenizer!r} could not be loaded: {exc}") from exc
        return _TokenizerCounter(loaded), f"tokenizer {tokenizer}"
    try:
        loaded = AutoTokenizer.from_pretrained(resolve_model_location(model), local_files_only=True)
    except Exception:  # noqa: BLE001 - not available locally: the estimate is the documented fallback
        log.warning(
            "no local tokenizer for embedding model %s: token counts are estimated (set a tokenizer for exact "
            "chunk sizes)",
            model,
        )
        return estimate_tokens, "estimate (characters/3, 1 per CJK character)"
    return _TokenizerCounter(loaded), f"tokenizer {model}"


class OpenAIEmbedder(ProfileLanguages):
    """Reaches its server in the constructor (at start-up): an unreachable server fails there, naming it."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "EMPTY",
        profile: str = "auto",
        batch_size: int = 64,
        max_seq_length: int = 256,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        tokenizer: str = "",
    ) -> None:
        self.base_url = base_url
        self.model_name = model
        # The served name decides the prefixes and languages as it does for a local model; a server that
        # serves a model under an alias needs the profile set explicitly.
        self.profile = PROFILES[infer_profile(model) if profile == "auto" else profile]
        self.batch_size = batch_size
        self._max_seq_length = max_seq_length
        self._timeout_s = timeout_s
        self._retries = retries
        self._backoff_s = backoff_s
        # Retries are ours (connection errors only); the SDK's would also retry 5xx and timeouts.
        self._client = OpenAI(
            base_url=base_url,
            api_key=api_key or "EMPTY",
            timeout=Timeout(timeout_s, connect=min(5.0, timeout_s)),
            max_retries=0,
        )
        self._dimension = 0
        try:
            self._dimension = len(self._embed_batch([_PROBE])[0])
        except EmbedderUnavailable as exc:
            self._client.close()
            raise EmbedderUnavailable(f"embedding server {base_url} (model {model}): {exc}") from exc
        try:
            self._count_tokens, counter = load_token_counter(tokenizer, model)
        except BaseException:
            self._client.close()
            raise
        log.info(
            "embedding server %s: model %s, %d dimensions, profile %s, token counts by %s",
            base_url, model, self._dimension, self.profile.name, counter,
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
        prefix = self.profile.prefix(kind)
        # OpenAI rejects an empty string as input; a single space tokenizes to nothing in subword
        # tokenizers, so it embeds what the empty text would.
        inputs = [(prefix + t) or " " for t in texts]
        vectors: list[list[float]] = []
        for start in range(0, len(inputs), self.batch_size):
            vectors.extend(self._embed_batch(inputs[start : start + self.batch_size]))
        return vectors

    def count_tokens(self, text: str) -> int:
        return self._count_tokens(text)

    def ping(self, timeout_s: float) -> None:
        """Raise EmbedderUnavailable unless the server answers HTTP within `timeout_s`: any answer, since not
        every embeddings server lists its models (/models), and reaching it is what is in question."""
        try:
            self._client.with_options(timeout=timeout_s).models.list()
        except APIStatusError:
            return
        except APIConnectionError as exc:  # APITimeoutError included
            raise EmbedderUnavailable(f"embedding server {self.base_url} unreachable: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    def _embed_batch(self, inputs: list[str]) -> list[list[float]]:
        retrying = Retrying(
            **retry_policy(retries=self._retries, timeout_s=self._timeout_s, backoff_s=self._backoff_s, log=log)
        )
        try:
            # encoding_format="float": the SDK would otherwise ask for base64, which not every
            # OpenAI-compatible server implements.
            response = retrying(
                self._client.embeddings.create, model=self.model_name, input=inputs, encoding_format="float"
            )
        except APIConnectionError as exc:  # APITimeoutError included
            raise EmbedderUnavailable(f"embedding server unavailable: {exc}") from exc
        except APIStatusError as exc:
            raise EmbedderUnavailable(f"embedding server error {exc.status_code}: {exc.message}") from exc
        except APIError as exc:  # a response that is not an embeddings response
            raise EmbedderUnavailable(f"embedding server gave an invalid response: {exc}") from exc
        # The OpenAI shape numbers each vector; servers are not obliged to keep the input order.
        rows = sorted(response.data, key=lambda item: item.index)
        if [row.index for row in rows] != list(range(len(inputs))):
            raise EmbedderUnavailable(f"embedding server returned {len(rows)} vectors for {len(inputs)} texts")
        return [self._unit(row.embedding) for row in rows]

    def _unit(self, vector: list[float]) -> list[float]:
        if self._dimension and len(vector) != self._dimension:
            # The collection was created for the probe's size; another model behind the same URL would
            # corrupt it.
            raise EmbedderUnavailable(
                f"embedding server returned {len(vector)} dimensions, expected {self._dimension} (model changed?)"
            )
        # Not every server normalises (TEI and vLLM follow the model's config); cosine search needs unit length.
        norm = math.sqrt(sum(x * x for x in vector))
        if norm == 0.0 or not math.isfinite(norm):
            raise EmbedderUnavailable(f"embedding server returned a vector of norm {norm}")
        return [float(x) / norm for x in vector]
