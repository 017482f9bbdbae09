"""Follow-up questions: rewrite history + question into a standalone search query, only when needed.

"And for contractors?" finds nothing on its own; "报销需要在多少天内提交？" finds the right document on its own
and must not be rewritten into the previous topic. So a question is first judged (retrieval/followup.py):
a self-contained one is searched as asked. A follow-up is rewritten by the model; a rewrite that comes
back empty, in another language or far longer than the question is discarded for the cheap fallback
(the previous user turn and the question together), and a rewrite that dropped one of the question's own
terms gets it back. Retrieval then searches with the question as asked as well as with the rewrite and
fuses the two (QueryPipeline.search), so a wrong rewrite cannot take the question's own hits away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import jinja2

from core.protocols import Generator
from core.text import detect_language, has_han
from core.types import ChatMessage
from retrieval.followup import Reason, history_dependence, key_terms
from retrieval.relevance import terms

log = logging.getLogger(__name__)

Method = Literal["none", "llm", "fallback"]

# A standalone query restates the question with what it refers to; anything much longer is the model
# answering, explaining or repeating the conversation.
MAX_GROWTH_CHARS = 200


@dataclass(frozen=True)
class Condensed:
    """`query` is what retrieval searches with besides the question as asked (the question itself when
    `method` is none)."""

    query: str
    method: Method
    reason: Reason = "self_contained"

    @property
    def condensed(self) -> bool:
        return self.method != "none"


def fallback_query(question: str, history: Sequence[ChatMessage]) -> str:
    previous = [m.content for m in history if m.role == "user"]
    return f"{previous[-1]}\n{question}" if previous else question


def keep_key_terms(question: str, rewrite: str) -> str:
    """The rewrite with any of the question's own content terms it dropped put back at its end."""
    lowered = rewrite.lower()
    present = terms(rewrite)
    missing = [t for t in sorted(key_terms(question)) if not (t in lowered if has_han(t) else t in present)]
    if not missing:
        return rewrite
    glue = "" if has_han(rewrite) and all(has_han(t) for t in missing) else " "
    return rewrite + glue + glue.join(missing)


def usable_rewrite(question: str, rewrite: str) -> str | None:
    """The rewrite to search with, or None when it must be discarded (empty, another language, too long)."""
    if not rewrite:
        return None
    if detect_language(rewrite) != detect_language(question):
        return None
    if len(rewrite) > 2 * len(question) + MAX_GROWTH_CHARS:
        return None
    return keep_key_terms(question, rewrite)


def condense_by_rules(question: str, history: Sequence[ChatMessage]) -> Condensed:
    """The decision without a model: a follow-up is searched together with the previous user turn."""
    turns = [m for m in history if m.role in ("user", "assistant")]
    if not turns:
        return Condensed(question, "none")
    dependence = history_dependence(question)
    if not dependence.depends:
        return Condensed(question, "none", dependence.reason)
    return Condensed(fallback_query(question, turns), "fallback", dependence.reason)


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
        ruled = condense_by_rules(question, turns)
        if not ruled.condensed:
            return ruled
        return await self.rewrite(question, turns, ruled)

    async def rewrite(self, question: str, history: Sequence[ChatMessage], fallback: Condensed) -> Condensed:
        """The model's standalone query for `question`, or `fallback` when there is no usable one."""
        turns = [m for m in history if m.role in ("user", "assistant")][-self._max_turns :]
        if self._generator is None:
            return fallback
        prompt = self._template.render(history=turns, question=question).strip()
        try:
            result = await asyncio.wait_for(
                self._generator.generate([ChatMessage(role="user", content=prompt)]), timeout=self._timeout_s
            )
        # The rewrite is an optimisation: whatever goes wrong with the model, the fallback still searches.
        except Exception as exc:  # noqa: BLE001
            log.warning("condense fell back (%s: %s)", type(exc).__name__, exc)
            return fallback
        query = usable_rewrite(question, _clean(result.text))
        if query is None:
            log.info("condense fell back: unusable rewrite %r", result.text[:200])
            return fallback
        return Condensed(query, "llm", fallback.reason)


def _clean(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    first = lines[0]
    for prefix in ("standalone query:", "query:", "standalone question:", "独立查询：", "查询：", "问题："):
        if first.lower().startswith(prefix):
            first = first[len(prefix) :].strip()
    return first.strip().strip('"“”')
