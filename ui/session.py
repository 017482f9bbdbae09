"""What the tabs share: the signed-in session, the labels to translate, and the app's settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ui.client import KbClient, Me
from ui.downloads import Tickets
from ui.i18n import t


@dataclass(frozen=True)
class Session:
    """A signed-in browser session. Lives in a `gr.State`: in this process's memory for that session only,
    never written to disk or logged, and dropped when the tab closes or the user signs out."""

    key: str = field(repr=False)
    me: Me

    def __repr__(self) -> str:  # a session printed in a traceback must not show the key
        return f"Session(me={self.me!r})"


@dataclass(frozen=True)
class UiConfig:
    api_url: str
    tickets: Tickets
    timeout_s: float = 180.0
    # Earlier turns sent with a question (user and assistant messages).
    history_messages: int = 6
    page_size: int = 20

    def client(self, session: Session) -> KbClient:
        return KbClient(self.api_url, session.key, timeout_s=self.timeout_s)


Text = str | Callable[[str], str]


class Labels:
    """The components whose texts follow the language: each registered with the label keys of its
    attributes (label, placeholder, value, info), so that one event can relabel the whole app."""

    def __init__(self) -> None:
        self._entries: list[tuple[gr.components.Component | gr.blocks.BlockContext, dict[str, Text]]] = []

    def add(self, component: Any, **texts: Text) -> Any:
        self._entries.append((component, texts))
        return component

    @property
    def components(self) -> list[Any]:
        return [component for component, _ in self._entries]

    def updates(self, lang: str) -> list[Any]:
        updates = []
        for _, texts in self._entries:
            values: dict[str, Any] = {
                attr: text(lang) if callable(text) else t(lang, text) for attr, text in texts.items()
            }
            updates.append(gr.update(**values))
        return updates


def split_list(text: str | None) -> list[str]:
    """Comma-separated input as a list (blank items dropped)."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def kb_names(session: Session | None) -> list[str]:
    return [kb.name for kb in session.me.knowledge_bases] if session else []


def default_kb(session: Session | None) -> str | None:
    names = kb_names(session)
    if not names:
        return None
    return "default" if "default" in names else names[0]
