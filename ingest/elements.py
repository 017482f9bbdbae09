"""The parsed pieces of a document (text, category, page, heading depth, table HTML)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from core.text import join_wide

# Page furniture repeats on every page and drowns the text it sits beside.
_DROPPED = {"PageBreak", "PageNumber", "Header", "Footer"}


@dataclass(frozen=True)
class Element:
    text: str
    category: str
    page: int | None = None
    depth: int | None = None  # heading level, 0 = top, where the format says
    html: str | None = None  # tables: the table as HTML, rows and cells intact

    def on_page(self, page: int | None) -> Element:
        return replace(self, page=page)


def from_unstructured(raw: Iterable[Any]) -> list[Element]:
    out = []
    for e in raw:
        text = str(e.text or "").strip()
        category = str(e.category)
        if not text or category in _DROPPED:
            continue
        meta = e.metadata
        depth = getattr(meta, "category_depth", None)
        html = getattr(meta, "text_as_html", None) if category == "Table" else None
        out.append(
            Element(
                text=text,
                category=category,
                page=getattr(meta, "page_number", None),
                depth=int(depth) if depth is not None else None,
                html=str(html) if html else None,
            )
        )
    return out


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs of OCR or plain text, lines within a paragraph joined."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if lines:
            out.append(_join_lines(lines))
    return out


def _join_lines(lines: list[str]) -> str:
    # Chinese lines join without a space; English ones with one (and a hyphen at a line end is a split word).
    return join_wide(lines, hyphenated=True)
