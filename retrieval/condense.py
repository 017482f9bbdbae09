"""Follow-up questions: rewrite history + question into a standalone search query.

"And for contractors?" finds nothing on its own. The model rewrites it with the conversation; when the
model is unavailable, slow or answers with something unusable, the cheap fallback searches with the
previous user turn and the question together.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import jinja2

from core.protocols import Generator
from core.types import ChatMessage

log = logging.getLogger(__name__)

Method = Literal["none", "llm", "fallback"]


@dataclass(frozen=True)
class Condensed:
    query: str
    method: Method


def fallback_query(question: str, history: Sequence[ChatMessage]) -> str:
    previous = [m.content for m in history if m.role == "user"]
    return f"{previous[-1]}\n{question}" if previous else question


class Condenser:
    def __init__(
        self, generator: Generator | None, template: jinja2.Template, *, max_turns: int = 6, timeout_s: float = 15.0
    ) -> None:
        self._generator = generator
        self._template = template
        self._max_turns = max_turns
        self._timeout_s = timeout_s

    async def condense(self, question: str, history: Sequence[ChatMessage]) -> Condensed:
        turns = [m for m in history if m.role in ("user", "assistant")][-self._max_turns :]
        if not turns:
            return Condensed(question, "none")
        if self._generator is None:
            return Condensed(fallback_query(question, turns), "fallback")
        prompt = self._template.render(history=turns, question=question).strip()
        try:
            result = await asyncio.wait_for(
                self._generator.generate([ChatMessage(role="user", content=prompt)]), timeout=self._timeout_s
            )
        # The rewrite is an optimisation: whatever goes wrong with the model, the fallback still searches.
        except Exception as exc:  # noqa: BLE001
            log.warning("condense fell back (%s: %s)", type(exc).__name__, exc)
            return Condensed(fallback_query(question, turns), "fallback")
        query = _clean(result.text)
        if not query or len(query) > 4 * len(question) + 200:
            log.info("condense fell back: unusable rewrite %r", result.text[:200])
            return Condensed(fallback_query(question, turns), "fallback")
        return Condensed(query, "llm")


def _clean(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    for prefix in ("standalone query:", "query:"):
        if first.lower().startswith(prefix):
            first = first[len(prefix) :].strip()
    return first.strip().strip('"“”')
