"""AnswerService: retrieval → prompt → model → verified citations, as one `Answer`."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from anyio import to_thread

from retrieval.context import Source
from retrieval.pipeline import QueryPipeline, Retrieval
from retrieval.types import Answer, ChatMessage, Generator, SearchFilter, SearchMode
from serving.citations import check_citations, citation_pattern
from serving.generator import GeneratorUnavailable
from serving.prompts import PromptBook, PromptSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    text: str
    kb: str = "default"
    top_k: int | None = None
    mode: SearchMode | None = None
    history: Sequence[ChatMessage] = ()
    acl_groups: Sequence[str] | None = None


def retrieval_query(question: Question) -> str:
    """A follow-up leans on the previous user turn ("and for contractors?"), so search with both."""
    previous = [m.content for m in question.history if m.role == "user"]
    return f"{previous[-1]}\n{question.text}" if previous else question.text


class AnswerService:
    def __init__(
        self, *, query: QueryPipeline, generator: Generator, prompts: PromptBook, top_k: int, citation_guard: bool
    ) -> None:
        self._citation_guard = citation_guard
        self._query = query
        self._generator = generator
        self._prompts = prompts
        self._top_k = top_k

    async def retrieve(self, question: Question) -> Retrieval:
        flt = SearchFilter(acl_groups=list(question.acl_groups) if question.acl_groups is not None else None)
        return await to_thread.run_sync(
            lambda: self._query.search(
                retrieval_query(question), kb=question.kb, top_k=question.top_k or self._top_k,
                mode=question.mode, flt=flt,
            )
        )  # fmt: skip

    async def ask(self, question: Question) -> Answer:
        started = time.perf_counter()
        retrieval = await self.retrieve(question)
        timings = dict(retrieval.timings)
        answer_id = uuid.uuid4().hex
        language = retrieval.language
        if not retrieval.sources:
            timings["total_ms"] = (time.perf_counter() - started) * 1000
            return Answer(
                answer=self._prompts.refusal(language), refused=True, timings=timings, answer_id=answer_id,
                message="no relevant context found",
            )  # fmt: skip
        messages = self._messages(question, retrieval.sources, language)
        refusal = self._prompts.refusal(language)
        pattern = citation_pattern(len(retrieval.sources), refusal, language) if self._citation_guard else None
        t = time.perf_counter()
        try:
            result = await self._generator.generate(messages, pattern=pattern)
        except GeneratorUnavailable as exc:
            log.warning("degraded answer: %s", exc)
            timings["total_ms"] = (time.perf_counter() - started) * 1000
            return Answer(
                answer="\n\n".join(f"[{s.index}] {s.title}: {s.citation().snippet}" for s in retrieval.sources),
                citations=[s.citation() for s in retrieval.sources],
                sources=[s.citation() for s in retrieval.sources],
                degraded=True, timings=timings, answer_id=answer_id,
                message="The language model is unavailable; these are the most relevant passages.",
            )  # fmt: skip
        timings["generate_ms"] = (time.perf_counter() - t) * 1000
        check = check_citations(result.text, len(retrieval.sources))
        refused = refusal.rstrip(".。").lower() in check.text.lower() and not check.cited
        citations = [retrieval.sources[n - 1].citation() for n in sorted(check.cited)]
        timings["total_ms"] = (time.perf_counter() - started) * 1000
        return Answer(
            answer=check.text, citations=citations, sources=[s.citation() for s in retrieval.sources],
            refused=refused, grounded=check.grounded,
            usage=result.usage, timings=timings, answer_id=answer_id,
        )  # fmt: skip

    def _messages(self, question: Question, sources: Sequence[Source], language: str) -> list[ChatMessage]:
        prompt_sources = [PromptSource(index=s.index, title=s.title, page=s.page, text=s.text) for s in sources]
        messages = self._prompts.answer_messages(question.text, prompt_sources, language)
        # Earlier turns go between the instructions and the question that carries the sources.
        return [messages[0], *question.history[-6:], *messages[1:]]
