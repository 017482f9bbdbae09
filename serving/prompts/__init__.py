"""Prompt templates, one set per answer language; the text lives in the .j2 files beside this module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jinja2

from core.types import ChatMessage

LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class PromptSource:
    index: int
    title: str
    page: int | None
    text: str


class PromptBook:
    def __init__(self, folder: Path | None = None) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(folder or Path(__file__).parent)),
            autoescape=False,  # plain-text prompts, not HTML
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=False,
        )

    def template(self, name: str) -> jinja2.Template:
        """A template by file name (e.g. condense.j2), from the one environment all prompts share."""
        return self._env.get_template(name)

    def _lang(self, language: str) -> str:
        return language if language in LANGUAGES else "en"

    def refusal(self, language: str) -> str:
        return self._env.get_template(f"refusal_{self._lang(language)}.j2").render().strip()

    def answer_messages(self, question: str, sources: Sequence[PromptSource], language: str) -> list[ChatMessage]:
        lang = self._lang(language)
        system = self._env.get_template(f"system_{lang}.j2").render(refusal=self.refusal(lang))
        user = self._env.get_template(f"user_{lang}.j2").render(question=question, sources=sources)
        return [
            ChatMessage(role="system", content=system.strip()),
            ChatMessage(role="user", content=user.strip()),
        ]
