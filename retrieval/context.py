"""Context assembly: dedupe, merge neighbouring chunks, fit a token budget, number the sources."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel

from core.types import Citation, ScoredChunk


class Source(BaseModel):
    """One numbered source as the model sees it ([index])."""

    index: int
    hit: ScoredChunk
    text: str

    @property
    def title(self) -> str:
        return self.hit.chunk.title

    @property
    def page(self) -> int | None:
        return self.hit.chunk.page

    def citation(self, snippet_chars: int = 240) -> Citation:
        chunk = self.hit.chunk
        snippet = self.text if len(self.text) <= snippet_chars else self.text[:snippet_chars].rstrip() + "…"
        return Citation(
            index=self.index,
            doc_id=chunk.doc_id,
            title=chunk.title,
            source=chunk.source,
            page=chunk.page,
            chunk_id=chunk.chunk_id,
            score=self.hit.score,
            snippet=snippet,
            text=self.text,
        )


# Instructions, question, source headers and chat-template tokens around the sources.
PROMPT_OVERHEAD_TOKENS = 300


def context_budget(max_model_len: int, answer_tokens: int, configured: int) -> int:
    """Tokens the sources may use: what the model's window leaves after the answer and the prompt's
    own text, capped by the configured budget (and never below a usable minimum)."""
    return max(64, min(configured, max_model_len - answer_tokens - PROMPT_OVERHEAD_TOKENS))


def llm_token_counter(model: str) -> Callable[[str], int] | None:
    """Token counting with the generator's own tokenizer when its files are local, else None."""
    from pathlib import Path

    if not (Path(model).expanduser() / "tokenizer_config.json").is_file():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(model).expanduser()))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False))


def _normalized(text: str) -> str:
    return " ".join(text.split()).lower()


def assemble_context(
    hits: Sequence[ScoredChunk], *, count_tokens: Callable[[str], int], budget_tokens: int
) -> list[Source]:
    """Sources in score order; a chunk adjacent to an earlier one of the same document joins it."""
    sources: list[Source] = []
    seen_text: set[str] = set()
    by_position: dict[tuple[str, int, int], int] = {}  # (doc, version, ordinal) -> position in sources
    used = 0
    for hit in hits:
        chunk = hit.chunk
        key = _normalized(chunk.text)
        if key in seen_text:
            continue
        cost = count_tokens(chunk.text)
        if used + cost > budget_tokens:
            if not sources:  # always keep the best chunk, cut to the budget
                cut = chunk.text[: max(1, len(chunk.text) * budget_tokens // max(cost, 1))]
                sources.append(Source(index=1, hit=hit, text=cut))
            break
        seen_text.add(key)
        used += cost
        neighbour = next(
            (
                by_position[(chunk.doc_id, chunk.version, chunk.ordinal + d)]
                for d in (-1, 1)
                if (chunk.doc_id, chunk.version, chunk.ordinal + d) in by_position
            ),
            None,
        )
        if neighbour is not None:
            prev = sources[neighbour]
            before = chunk.ordinal < prev.hit.chunk.ordinal
            merged = f"{chunk.text}\n{prev.text}" if before else f"{prev.text}\n{chunk.text}"
            sources[neighbour] = Source(index=prev.index, hit=prev.hit, text=merged)
            by_position[(chunk.doc_id, chunk.version, chunk.ordinal)] = neighbour
            continue
        by_position[(chunk.doc_id, chunk.version, chunk.ordinal)] = len(sources)
        sources.append(Source(index=len(sources) + 1, hit=hit, text=chunk.text))
    return sources
