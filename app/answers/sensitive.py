"""Sensitive terms: questions that mention one are refused, answers that contain one are withheld.

Terms come from `settings.security.sensitive_terms` and `sensitive_terms_file` (one a line; blank lines
and lines starting with # are skipped), read once when the server starts. A term matches as a
case-insensitive substring. With no terms, nothing is checked.

A refused question is a 400 with code "sensitive_term" (not 422: the request is well formed, the policy
refuses it). A withheld JSON answer keeps no model text, citations or passages and says `withheld: true`;
a stream stops before the token that completes a term and ends with an `error` event, code "withheld".
The term itself is never sent to the caller.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from pathlib import Path

from app.answers.service import StreamEvent
from app.errors import KBError
from app.settings import SecuritySettings
from core.types import Answer, ChatMessage

WITHHELD_MESSAGE = "The answer was withheld because it touches a topic this knowledge base may not answer about."


class SensitiveTerm(KBError):
    status_code = 400
    code = "sensitive_term"

    def __init__(self) -> None:
        super().__init__("the question mentions a topic this knowledge base may not answer about")


class SensitiveTerms:
    def __init__(self, terms: Iterable[str]) -> None:
        self._terms = tuple(sorted({t.strip().casefold() for t in terms if t.strip()}))

    @classmethod
    def from_settings(cls, security: SecuritySettings) -> SensitiveTerms:
        terms = list(security.sensitive_terms)
        if security.sensitive_terms_file is not None:
            # A missing file is an error at start-up, not an empty list: the filter must not silently go off.
            terms += _read_terms(security.sensitive_terms_file)
        return cls(terms)

    @property
    def enabled(self) -> bool:
        return bool(self._terms)

    def find(self, text: str) -> str | None:
        """The first term the text contains, or None."""
        folded = text.casefold()
        return next((t for t in self._terms if t in folded), None)

    def check_question(self, question: str, history: Iterable[ChatMessage] = ()) -> None:
        """Raises SensitiveTerm when the question (or an earlier turn sent with it) contains a term."""
        if any(self.find(text) for text in (question, *(m.content for m in history))):
            raise SensitiveTerm()

    def screen(self, answer: Answer) -> Answer:
        """The answer, or a withheld one in its place when its text contains a term."""
        if self.find(answer.answer) is None:
            return answer
        return answer.model_copy(
            update={
                "answer": WITHHELD_MESSAGE, "citations": [], "sources": [], "sentences": [], "grounded": False,
                "withheld": True, "message": WITHHELD_MESSAGE,
            }
        )  # fmt: skip

    async def screen_stream(self, events: AsyncGenerator[StreamEvent]) -> AsyncGenerator[StreamEvent]:
        """The events, until the text streamed so far would contain a term: then one `error` event, code
        "withheld", and no more (the token that completes the term is not sent)."""
        streamed = ""
        # Closed on the way out, so that the model stops generating once the answer is withheld.
        async with aclosing(events):
            async for event in events:
                text = ""
                if event.name == "token":
                    streamed += str(event.data.get("text", ""))
                    text = streamed
                elif event.name == "citations":
                    # The verified text can differ from the tokens (invalid markers removed).
                    text = str(event.data.get("answer", ""))
                if self.find(text) is not None:
                    yield StreamEvent("error", {"code": "withheld", "message": WITHHELD_MESSAGE})
                    return
                yield event


def _read_terms(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
