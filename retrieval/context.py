"""Context assembly: dedupe, merge neighbouring chunks, fit a token budget, number the sources."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from core.types import Chunk, Citation, ScoredChunk


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


Neighbours = Callable[[Chunk, Sequence[int]], Sequence[Chunk]]
"""The chunks of a hit's document version at these ordinals that the caller may read (store.chunks_at)."""

_MIN_OVERLAP = 16  # characters: a shorter match between one chunk's end and the next one's start is chance


def continuation(before: str, after: str, section: str = "") -> str:
    """What `after` adds to `before` when it is the next chunk of the same section: its text without the
    heading line the chunker put on both, and without the overlap the splitter repeats."""
    if section and after.startswith(section + "\n") and before.startswith(section + "\n"):
        after = after[len(section) + 1 :]
    probe = after[:_MIN_OVERLAP]
    if len(probe) < _MIN_OVERLAP:
        return after
    start = before.find(probe, max(0, len(before) - len(after)))
    while start >= 0:
        if after.startswith(before[start:]):
            return after[len(before) - start :].lstrip()
        start = before.find(probe, start + 1)
    return after


@dataclass
class _Run:
    """Consecutive chunks of one document version: one numbered source, cited as its best hit."""

    hit: ScoredChunk
    chunks: dict[int, Chunk]  # by ordinal, consecutive
    text: str = ""

    def joined(self) -> str:
        ordered = [self.chunks[o] for o in sorted(self.chunks)]
        text = ordered[0].text
        for prev, chunk in itertools.pairwise(ordered):
            same = prev.section == chunk.section
            text += "\n" + (continuation(prev.text, chunk.text, chunk.section) if same else chunk.text)
        return text


def assemble_context(
    hits: Sequence[ScoredChunk], *, count_tokens: Callable[[str], int], budget_tokens: int, expand: int = 0,
    neighbours: Neighbours | None = None,
) -> list[Source]:  # fmt: skip
    """Sources in score order; a chunk adjacent to an earlier one of the same document joins it.

    Small-to-big (`expand` > 0 with `neighbours`): each hit, before the next one is taken, grows by up to
    `expand` chunks on each side, nearest first, of its own section and page (so that its citation's page
    stays right), as far as the budget allows: a hit matched small is read with its surroundings."""
    context = _Context(count_tokens, budget_tokens)
    for hit in hits:
        chunk = hit.chunk
        if context.holds(chunk):
            continue
        n = next((context.placed[_at(chunk, d)] for d in (-1, 1) if _at(chunk, d) in context.placed), None)
        if n is None:
            cost = count_tokens(chunk.text)
            if context.used + cost > budget_tokens:
                if not context.runs:  # always keep the best chunk, cut to the budget
                    cut = chunk.text[: max(1, len(chunk.text) * budget_tokens // max(cost, 1))]
                    return [Source(index=1, hit=hit, text=cut)]
                break
            n = context.start(hit, cost)
        elif not context.grow(n, chunk):
            break
        if expand > 0 and neighbours is not None:
            context.expand(n, chunk, expand, neighbours)
    return [Source(index=i + 1, hit=run.hit, text=run.text) for i, run in enumerate(context.runs)]


def _at(chunk: Chunk, offset: int = 0) -> tuple[str, int, int]:
    return (chunk.doc_id, chunk.version, chunk.ordinal + offset)


class _Context:
    def __init__(self, count_tokens: Callable[[str], int], budget_tokens: int) -> None:
        self.count_tokens = count_tokens
        self.budget = budget_tokens
        self.used = 0
        self.runs: list[_Run] = []
        self.placed: dict[tuple[str, int, int], int] = {}  # (doc, version, ordinal) -> position in runs
        self._seen_text: set[str] = set()

    def holds(self, chunk: Chunk) -> bool:
        return _at(chunk) in self.placed or _normalized(chunk.text) in self._seen_text

    def start(self, hit: ScoredChunk, cost: int) -> int:
        self.runs.append(_Run(hit, {}))
        self._place(len(self.runs) - 1, hit.chunk, cost)
        return len(self.runs) - 1

    def grow(self, n: int, chunk: Chunk) -> bool:
        """Add `chunk` (next to run `n`) if what it adds fits the budget."""
        run = self.runs[n]
        grown = _Run(run.hit, {**run.chunks, chunk.ordinal: chunk}).joined()
        cost = max(0, self.count_tokens(grown) - self.count_tokens(run.text))
        if self.used + cost > self.budget:
            return False
        self._place(n, chunk, cost)
        return True

    def _place(self, n: int, chunk: Chunk, cost: int) -> None:
        self.runs[n].chunks[chunk.ordinal] = chunk
        self.runs[n].text = self.runs[n].joined()
        self.placed[_at(chunk)] = n
        self._seen_text.add(_normalized(chunk.text))
        self.used += cost

    def expand(self, n: int, hit: Chunk, expand: int, neighbours: Neighbours) -> None:
        """Grow run `n` around `hit` outwards; a side stops at a chunk of another section or page, one
        already in the context, or one that does not fit."""
        wanted = [hit.ordinal + d for d in range(-expand, expand + 1) if d and hit.ordinal + d >= 0]
        found = {c.ordinal: c for c in neighbours(hit, wanted) if c.section == hit.section and c.page == hit.page}
        open_sides = {-1, 1}
        for step in range(1, expand + 1):
            for side in (1, -1):
                chunk = found.get(hit.ordinal + side * step)
                if side in open_sides and (chunk is None or self.holds(chunk) or not self.grow(n, chunk)):
                    open_sides.discard(side)
