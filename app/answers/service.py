"""AnswerService: retrieval → prompt → model → verified citations, as one `Answer`."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from anyio import to_thread

from app.ops.metrics import failure_kind
from core.protocols import Generator, GeneratorUnavailable
from core.text import is_wide
from core.tracing import stage
from core.types import (
    Access,
    Answer,
    AnswerMode,
    ChatMessage,
    Citation,
    Evidence,
    SearchFilter,
    SearchMode,
    SentenceGrounding,
    Usage,
)
from retrieval.condense import Condensed, Condenser, condense_by_rules, fallback_query
from retrieval.context import Source
from retrieval.pipeline import QueryPipeline, Retrieval
from serving.citations import check_citations, citation_pattern, split_sentences
from serving.prompts import PromptBook, PromptSource
from serving.support import Passage, Quote, Reading, Span, SupportScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    text: str
    # Whose question it is: no default, so a handler that forgets the caller cannot ask at all.
    access: Access
    kb: str = "default"
    top_k: int | None = None
    mode: SearchMode | None = None
    history: Sequence[ChatMessage] = ()
    # Per-request decoding limits (None: the configured ones); callers check them against their bounds.
    max_tokens: int | None = None
    temperature: float | None = None
    # The caller may name the answer before it exists (the OpenAI stream sends its id in the first chunk).
    answer_id: str | None = None
    # None: the configured mode (evaluation compares the modes on the same questions).
    answer_mode: AnswerMode | None = None


class AnswerObserver(Protocol):
    """What the service reports as it works (app.ops.metrics.Metrics is one)."""

    def observe_retrieval(self, retrieval: Retrieval) -> None: ...

    def observe_error(self, component: Literal["model_server"], kind: Literal["timeout", "error"]) -> None: ...


class AnswerService:
    def __init__(
        self, *, query: QueryPipeline, generator: Generator, prompts: PromptBook, top_k: int, citation_guard: bool,
        support: SupportScorer, answer_mode: AnswerMode = "generative", extractive_sentences: int = 3,
        condenser: Condenser | None = None, observer: AnswerObserver | None = None, followup_gain: float = 0.0,
    ) -> None:  # fmt: skip
        self._followup_gain = followup_gain
        self._support = support
        self._answer_mode = answer_mode
        self._extractive_sentences = extractive_sentences
        self._observer = observer
        self._condenser = condenser
        self._citation_guard = citation_guard
        self._query = query
        self._generator = generator
        self._prompts = prompts
        self._top_k = top_k

    async def retrieve(self, question: Question) -> Retrieval:
        flt = SearchFilter(access=question.access)
        timings: dict[str, float] = {}
        condensed = condense_by_rules(question.text, question.history)
        if not condensed.condensed and self._followup_gain > 0:
            condensed = await self._gained(question, flt, timings)
        if self._condenser is not None and condensed.condensed:
            with stage(timings, "condense"):
                condensed = await self._condenser.rewrite(question.text, question.history, condensed)
        if condensed.condensed:
            log.info("follow-up (%s) searched as %r beside the question", condensed.reason, condensed.query[:200])
        retrieval = await to_thread.run_sync(
            lambda: self._query.search(
                question.text, kb=question.kb, top_k=question.top_k or self._top_k, mode=question.mode, flt=flt,
                rewrite=condensed.query if condensed.condensed else None,
            )
        )  # fmt: skip
        retrieval.timings.update(timings)
        # A marker beside the durations (as rerank_unavailable is): whether the history changed the search.
        retrieval.timings["condensed"] = condensed.condensed
        if self._observer is not None:
            self._observer.observe_retrieval(retrieval)
        return retrieval

    async def _gained(self, question: Question, flt: SearchFilter, timings: dict[str, float]) -> Condensed:
        """A question without a follow-up marker is a follow-up all the same when the previous user turn
        makes its best hits far more relevant than its own words do."""
        probe = fallback_query(question.text, question.history)
        if probe == question.text:
            return Condensed(question.text, "none")
        with stage(timings, "followup_check"):
            gain = await to_thread.run_sync(
                lambda: self._query.context_gain(
                    question.text, probe, kb=question.kb, top_k=question.top_k or self._top_k, mode=question.mode,
                    flt=flt,
                )
            )  # fmt: skip
        if gain is None or gain < self._followup_gain:
            return Condensed(question.text, "none")
        return Condensed(probe, "fallback", "context_gain")

    async def ask(self, question: Question) -> Answer:
        turn = await self._prepare(question)
        if not turn.retrieval.sources:
            return turn.refusal_answer()
        if turn.mode == "extractive":
            return await to_thread.run_sync(turn.extractive_answer)
        try:
            with stage(turn.timings, "generate"):
                result = await self._generator.generate(
                    turn.messages, pattern=turn.pattern, max_tokens=question.max_tokens,
                    temperature=question.temperature,
                )  # fmt: skip
        except GeneratorUnavailable as exc:
            log.warning("degraded answer: %s", exc)
            self._model_failed(exc)
            return await to_thread.run_sync(turn.degraded_answer)
        return await to_thread.run_sync(turn.final_answer, result.text, result.usage)

    async def stream(self, question: Question) -> AsyncGenerator[StreamEvent]:
        """`token` events, then one `citations` event, then `done`; or `error` if the model fails mid-answer.

        In `auto` mode, when the streamed text turns out to carry no supported claim, the `citations` event
        carries the extractive answer in `answer` (and `extractive: true`): clients replace the streamed
        text with it."""
        turn = await self._prepare(question)
        if not turn.retrieval.sources:
            async for event in _replay(turn.refusal_answer()):
                yield event
            return
        if turn.mode == "extractive":
            async for event in _replay(await to_thread.run_sync(turn.extractive_answer)):
                yield event
            return
        parts: list[str] = []
        usage = Usage()
        try:
            # Not the current span: this generator's consumer may resume it in another context.
            with stage(turn.timings, "generate", current=False):
                async for delta in self._generator.stream(
                    turn.messages, pattern=turn.pattern, max_tokens=question.max_tokens,
                    temperature=question.temperature,
                ):  # fmt: skip
                    if delta.text:
                        if not parts:
                            turn.timings["first_token_ms"] = (time.perf_counter() - turn.started) * 1000
                        parts.append(delta.text)
                        yield StreamEvent("token", {"text": delta.text})
                    if delta.usage is not None:
                        usage = delta.usage
        except GeneratorUnavailable as exc:
            log.warning("stream failed: %s", exc)
            self._model_failed(exc)
            if parts:
                yield StreamEvent("error", {"code": "llm_unavailable", "message": str(exc)})
                return
            async for event in _replay(await to_thread.run_sync(turn.degraded_answer)):
                yield event
            return
        answer = await to_thread.run_sync(turn.final_answer, "".join(parts), usage)
        yield _citations_event(answer)
        yield _done_event(answer)

    def _model_failed(self, exc: GeneratorUnavailable) -> None:
        if self._observer is not None:
            self._observer.observe_error("model_server", failure_kind(exc))

    async def prompt(self, question: Question) -> tuple[list[ChatMessage], str | None]:
        """The messages and decoding pattern kb would send the model for this question (no messages when it
        would refuse): what `kb bench e2e` sends straight to vLLM to measure kb's overhead."""
        turn = await self._prepare(question)
        return turn.messages, turn.pattern

    async def _prepare(self, question: Question) -> _Turn:
        started = time.perf_counter()
        retrieval = await self.retrieve(question)
        language = retrieval.language
        refusal = self._prompts.refusal(language)
        guard = self._citation_guard and bool(retrieval.sources)
        mode = question.answer_mode or self._answer_mode
        turn = _Turn(
            started=started,
            retrieval=retrieval,
            refusal=refusal,
            messages=self._messages(question, retrieval.sources, language) if retrieval.sources else [],
            pattern=citation_pattern(len(retrieval.sources), refusal, language) if guard else None,
            timings=dict(retrieval.timings),
            question=question.text,
            mode=mode,
            support=self._support,
            extractive_sentences=self._extractive_sentences,
        )
        if question.answer_id:
            turn.answer_id = question.answer_id
        return turn

    def _messages(self, question: Question, sources: Sequence[Source], language: str) -> list[ChatMessage]:
        prompt_sources = [PromptSource(index=s.index, title=s.title, page=s.page, text=s.text) for s in sources]
        messages = self._prompts.answer_messages(question.text, prompt_sources, language)
        # Earlier turns go between the instructions and the question that carries the sources.
        return [messages[0], *question.history[-6:], *messages[1:]]


@dataclass(frozen=True)
class StreamEvent:
    name: str  # token | citations | done | error
    data: dict[str, object]


@dataclass
class _Turn:
    """One question on its way to an answer: what retrieval found and what the model will be sent."""

    started: float
    retrieval: Retrieval
    refusal: str
    messages: list[ChatMessage]
    pattern: str | None
    timings: dict[str, float]
    support: SupportScorer
    question: str = ""
    mode: AnswerMode = "generative"
    extractive_sentences: int = 3
    answer_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _reading: Reading | None = None

    def _sources(self) -> list[Citation]:
        return [s.citation() for s in self.retrieval.sources]

    def _finish(self) -> dict[str, float]:
        self.timings["total_ms"] = (time.perf_counter() - self.started) * 1000
        return self.timings

    def reading(self) -> Reading:
        """The sources split into sentences and indexed for support scores (once per answer)."""
        if self._reading is None:
            passages = [Passage(s.index, s.text, headings=(s.hit.chunk.section,)) for s in self.retrieval.sources]
            # Titles and section names are what a degenerate answer repeats around its markers: not claims.
            ignore = {s.title for s in self.retrieval.sources} | {
                part for s in self.retrieval.sources for part in s.hit.chunk.section.split(" > ")
            }
            with stage(self.timings, "support"):
                self._reading = self.support.read(passages, ignore=sorted(ignore))
        return self._reading

    def refusal_answer(self) -> Answer:
        return Answer(
            answer=self.refusal, refused=True, timings=self._finish(), answer_id=self.answer_id,
            message="no relevant context found",
        )  # fmt: skip

    def degraded_answer(self) -> Answer:
        answer = self.extractive_answer()
        return answer.model_copy(
            update={
                "degraded": True,
                "message": "The language model is unavailable; these are the sentences of the sources that best "
                "answer the question.",
            }
        )

    def extractive_answer(self, usage: Usage | None = None) -> Answer:
        """The sentences of the sources that best answer the question, each quoted with its [n]."""
        reading = self.reading()
        with stage(self.timings, "extract"):
            quotes = reading.extract(self.question, limit=self.extractive_sentences)
            sources = self._sources()
            if not quotes:  # passages without a single sentence (a table, a list): show the passages themselves
                text = "\n\n".join(f"[{c.index}] {c.title}: {c.snippet}" for c in sources)
                cited = [c.index for c in sources]
            else:
                text = "\n".join(_quoted(q.span.text, q.index) for q in quotes)
                cited = list(dict.fromkeys(q.index for q in quotes))
            check = check_citations(text, len(sources))
            sentences = reading.ground(split_sentences(check.text))
        sources = self._with_evidence(sources, sentences, quotes)
        return Answer(
            answer=check.text, citations=[sources[n - 1] for n in sorted(cited)], sources=sources,
            extractive=True, grounded=bool(sentences) and all(s.grounded for s in sentences), sentences=sentences,
            usage=usage or Usage(), timings=self._finish(), answer_id=self.answer_id,
            message="These are the sentences of the sources that best answer the question.",
        )  # fmt: skip

    def final_answer(self, text: str, usage: Usage) -> Answer:
        check = check_citations(text, len(self.retrieval.sources))
        refused = self.refusal.rstrip(".。").lower() in check.text.lower() and not check.cited
        sentences = [] if refused else self.reading().ground(check.sentences)
        if self.mode == "auto" and not refused and not any(s.grounded for s in sentences):
            # The model's text states nothing its sources support (titles and markers, a wrong number):
            # quote the sources instead.
            return self.extractive_answer(usage)
        sources = self._with_evidence(self._sources(), sentences, [])
        return Answer(
            answer=check.text, citations=[sources[n - 1] for n in sorted(check.cited)], sources=sources,
            refused=refused, grounded=check.grounded and not refused and all(s.grounded for s in sentences),
            sentences=sentences, usage=usage, timings=self._finish(), answer_id=self.answer_id,
        )  # fmt: skip

    def _with_evidence(
        self, sources: list[Citation], sentences: list[SentenceGrounding], quotes: list[Quote]
    ) -> list[Citation]:
        """Each source with the sentences of its passage that support what the answer says with it: the
        quoted ones, else the best match for the sentences citing it, else for the question."""
        reading = self.reading()
        out = []
        for c in sources:
            quoted = [q.span for q in quotes if q.index == c.index][:2]
            spans = sorted(quoted, key=lambda s: s.start) or reading.evidence(
                c.index, [s.text for s in sentences if c.index in s.citations], self.question
            )
            out.append(c.model_copy(update={"evidence": [_evidence(span) for span in spans]}))
        return out


def _evidence(span: Span) -> Evidence:
    return Evidence(text=span.text, start=span.start, end=span.end)


_MARKER_LIKE = re.compile(r"[\[【]\s*\d{1,3}(?:\s*[,，、]\s*\d{1,3})*\s*[\]】]")
_FINAL_STOP = re.compile(r"([.!?。！？]+)$")


def _quoted(sentence: str, index: int) -> str:
    """A passage sentence as an answer line with its [n] before the final stop ("... leave [1].",
    "……年假[1]。"); markers the sentence happens to contain would be read as citations, so they go."""
    text = " ".join(_MARKER_LIKE.sub("", sentence).split())
    stop = _FINAL_STOP.search(text)
    body, end = (text[: stop.start()], stop.group(1)) if stop else (text, "")
    space = "" if body and is_wide(body[-1]) else " "
    return f"{body}{space}[{index}]{end}"


def _citations_event(answer: Answer) -> StreamEvent:
    return StreamEvent(
        "citations",
        {
            "answer": answer.answer,  # the text with invalid markers removed
            "citations": [c.model_dump() for c in answer.citations],
            "sources": [c.model_dump() for c in answer.sources],
            "grounded": answer.grounded,
            "extractive": answer.extractive,
            "sentences": [s.model_dump() for s in answer.sentences],
        },
    )


def _done_event(answer: Answer) -> StreamEvent:
    return StreamEvent(
        "done",
        {
            "answer_id": answer.answer_id, "refused": answer.refused, "degraded": answer.degraded,
            "extractive": answer.extractive, "message": answer.message, "usage": answer.usage.model_dump(),
            "timings": answer.timings,
        },
    )  # fmt: skip


async def _replay(answer: Answer) -> AsyncIterator[StreamEvent]:
    """An answer made without streaming (refusal, degraded) sent as the same sequence of events."""
    yield StreamEvent("token", {"text": answer.answer})
    yield _citations_event(answer)
    yield _done_event(answer)
