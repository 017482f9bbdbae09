"""The audit row of one question (/ask, /search, the OpenAI endpoint, MCP): the question, as text or hash,
and the documents returned."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from contextlib import aclosing
from typing import Any

from fastapi import Request

from app.answers.sensitive import SensitiveTerm, SensitiveTerms
from app.answers.service import StreamEvent
from app.audit.trail import Action, Actor, AuditLog, note_kb, record_async
from core.types import Answer, ChatMessage, Citation


def answer_docs(items: Iterable[Citation | Mapping[str, Any]]) -> list[str]:
    """The document ids of returned passages, each once, in order."""
    ids = (item.doc_id if isinstance(item, Citation) else str(item.get("doc_id", "")) for item in items)
    return list(dict.fromkeys(i for i in ids if i))


class QuestionAudit:
    """The audit row of one /ask or /search: the question (text or hash) and the documents returned."""

    def __init__(self, audit: AuditLog, actor: Actor, action: Action, *, kb: str, question: str) -> None:
        self._audit = audit
        self._actor = actor
        self._action = action
        self._kb = kb
        self._question: dict[str, Any] = audit.question(question)

    @classmethod
    def of_request(cls, request: Request, action: Action, *, kb: str, question: str) -> QuestionAudit:
        note_kb(request, kb)
        audit: AuditLog = request.app.state.container.audit
        return cls(audit, Actor.of_request(request), action, kb=kb, question=question)

    async def record(self, status: int = 200, **detail: Any) -> None:
        await record_async(
            self._audit, self._action, actor=self._actor, kb=self._kb, status=status,
            detail={**self._question, **detail},
        )  # fmt: skip

    async def refuse_sensitive(self, terms: SensitiveTerms, question: str, history: Iterable[ChatMessage] = ()) -> None:
        """Raises SensitiveTerm (400) for a question that mentions a sensitive term, recorded first."""
        try:
            terms.check_question(question, history)
        except SensitiveTerm as exc:
            await self.record(exc.status_code, refused=exc.code)
            raise

    async def answered(self, answer: Answer) -> None:
        await self.record(
            docs=answer_docs(answer.sources), refused=answer.refused, degraded=answer.degraded,
            withheld=answer.withheld, stream=False,
        )  # fmt: skip

    async def streamed(self, events: AsyncGenerator[StreamEvent]) -> AsyncGenerator[StreamEvent]:
        """The events as they are; the row is written when the stream ends (or the client goes away)."""
        outcome: dict[str, Any] = {"docs": [], "refused": False, "degraded": False, "withheld": False}
        completed = False
        try:
            async with aclosing(events):
                async for event in events:
                    if event.name == "citations":
                        outcome["docs"] = answer_docs(_mappings(event.data.get("sources")))
                    elif event.name == "done":
                        outcome.update(refused=event.data.get("refused"), degraded=event.data.get("degraded"))
                    elif event.name == "error":
                        outcome["error"] = event.data.get("code")
                        outcome["withheld"] = event.data.get("code") == "withheld"
                    yield event
            completed = True
        finally:
            await self.record(**outcome, stream=True, completed=completed)


def _mappings(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []
