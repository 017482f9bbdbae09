"""Everything kb does around an answer, the same for every door it is asked through.

`/ask`, `/v1/chat/completions` and the MCP `ask` tool all go through `Asking`: the knowledge-base grant,
the question and history sizes, the sensitive-term filter, the key's token budget, the cap on answers in
flight, cancellation when an HTTP client leaves, withholding answers that name a sensitive term,
charging the tokens used, the audit row and the metrics. Only the wire format differs between the doors.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial

from anyio import to_thread
from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError

from app.access.principal import Principal
from app.answers.audit import QuestionAudit
from app.answers.sensitive import SensitiveTerms
from app.answers.service import AnswerService, Question, StreamEvent
from app.audit.trail import Action, Actor, AuditLog, note_kb
from app.feedback.service import FeedbackLog, KeptAnswer
from app.ops.limits import AnswerSlot, AnswerSlots, check_question, unless_disconnected
from app.ops.metrics import Metrics
from app.ops.ratelimit import RateLimiter
from app.settings import RequestLimitSettings
from core.types import Answer, ChatMessage, Citation, Usage

log = logging.getLogger(__name__)


@dataclass
class Stream:
    """The events of a streamed answer, and what frees its in-flight slot should the stream never start."""

    events: AsyncGenerator[StreamEvent]
    release: AnswerSlot


@dataclass(frozen=True)
class Gate:
    """What one process shares between all the answers it gives: the services an answer passes through, the
    rate limiter and the in-flight cap (built by Container.gate)."""

    answers: AnswerService
    audit: AuditLog
    sensitive: SensitiveTerms
    feedback: FeedbackLog
    metrics: Metrics
    limits: RequestLimitSettings
    limiter: RateLimiter
    slots: AnswerSlots

    @classmethod
    def of_request(cls, request: Request) -> Gate:
        gate: Gate = request.app.state.gate
        return gate


class Asking:
    def __init__(
        self, gate: Gate, caller: Principal, *, actor: Actor, request: Request | None = None,
        action: Action = Action.ask,
    ) -> None:  # fmt: skip
        self._gate = gate
        self._caller = caller
        self._actor = actor
        # An HTTP request, when there is one: its refusals name the knowledge base in the audit log, and a
        # client that hangs up cancels the answer.
        self._request = request
        self._action = action
        self._audit: QuestionAudit | None = None

    @classmethod
    def of_request(cls, request: Request, caller: Principal, *, action: Action = Action.ask) -> Asking:
        return cls(Gate.of_request(request), caller, actor=Actor.of_request(request), request=request, action=action)

    async def admit(self, *, kb: str, question: str, history: Sequence[ChatMessage]) -> None:
        """Raises the error the caller gets (403, 422, 400 sensitive term, 429) before any work is done."""
        gate = self._gate
        if self._request is not None:
            note_kb(self._request, kb)
        self._audit = QuestionAudit(gate.audit, self._actor, self._action, kb=kb, question=question)
        self._caller.require_kb(kb)
        check_question(question, history, gate.limits)
        await self._audit.refuse_sensitive(gate.sensitive, question, history)
        await self._gate.limiter.require_tokens_async(self._caller, self._actor.ip or None)

    async def answer(self, question: Question) -> Answer:
        audit = self._admitted()
        gate, metrics = self._gate, self._gate.metrics
        with gate.slots.take(), metrics.answer_in_flight():
            work = gate.answers.ask(question)
            raw = await (unless_disconnected(self._request, work) if self._request is not None else work)
            answer = gate.sensitive.screen(raw)
        await self._gate.limiter.charge_usage(self._caller, self._actor.ip or None, answer.usage)
        metrics.observe_answer_model(answer, kb=question.kb, key=self._caller.name)
        await audit.answered(answer)
        await self._keep(answer, question)
        return answer

    def stream(self, question: Question) -> Stream:
        audit = self._admitted()
        slot = self._gate.slots.take()
        gate = self._gate
        events = audit.streamed(gate.sensitive.screen_stream(self._charged(gate.answers.stream(question))))
        return Stream(events=self._observed(self._kept(events, question), slot, question.kb), release=slot)

    async def _kept(self, events: AsyncGenerator[StreamEvent], question: Question) -> AsyncGenerator[StreamEvent]:
        """The events as they are; the answer they make up is kept before `done` is sent, so that feedback
        sent as soon as the stream ends finds it."""
        cited: dict[str, object] = {}
        async with aclosing(events):
            async for event in events:
                if event.name == "citations":
                    cited = event.data
                elif event.name == "done" and cited:
                    answer = Answer(
                        answer=str(cited.get("answer", "")),
                        citations=[Citation.model_validate(c) for c in _list(cited.get("citations"))],
                        sources=[Citation.model_validate(c) for c in _list(cited.get("sources"))],
                        refused=bool(event.data.get("refused")), degraded=bool(event.data.get("degraded")),
                        answer_id=str(event.data.get("answer_id", "")),
                    )  # fmt: skip
                    await self._keep(answer, question)
                yield event

    async def _keep(self, answer: Answer, question: Question) -> None:
        """Keep the answer by its id for feedback; a database that fails here costs the feedback, not the answer."""
        kept = KeptAnswer.of(
            answer, question=question.text, kb=question.kb, key_id=self._caller.key_id, key_name=self._caller.name
        )
        try:
            await to_thread.run_sync(partial(self._gate.feedback.keep_answer, kept))
        except SQLAlchemyError:
            log.warning("keeping answer %s for feedback failed", answer.answer_id, exc_info=True)

    async def _observed(
        self, events: AsyncGenerator[StreamEvent], slot: AnswerSlot, kb: str
    ) -> AsyncGenerator[StreamEvent]:
        metrics = self._gate.metrics
        # In flight until the stream ends or the client leaves (the generator is closed then).
        with slot, metrics.answer_in_flight():
            observe = metrics.stream_observer(kb=kb, key=self._caller.name)
            async for event in events:
                observe(event.name, event.data)
                yield event

    async def _charged(self, events: AsyncGenerator[StreamEvent]) -> AsyncGenerator[StreamEvent]:
        async for event in events:
            if event.name == "done":  # charged before the client can hang up on the last event
                usage = Usage.model_validate(event.data["usage"])
                await self._gate.limiter.charge_usage(self._caller, self._actor.ip or None, usage)
            yield event

    def _admitted(self) -> QuestionAudit:
        if self._audit is None:
            raise RuntimeError("Asking.admit must run before the answer")
        return self._audit


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []
