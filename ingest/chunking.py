"""Structure-aware chunking sized in tokens of the embedding model's tokenizer.

A heading starts a new section; each section is split at paragraph, then Chinese/English sentence
boundaries, then clause boundaries (langchain's RecursiveCharacterTextSplitter), and every chunk
carries its section heading so that it reads (and embeds) on its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from langchain_text_splitters import RecursiveCharacterTextSplitter

from ingest.loaders import Element, LoadedDocument

# Ordered from the strongest boundary to the weakest; sentence ends of both languages come before
# clause marks so that a chunk ends at a full stop whenever the size allows.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", ". ", "! ", "? ", "；", "; ", "，", ", ", " ", ""]
_SENTENCE_END = re.compile(r"[.!?。！？:：;；]$")
_MAX_HEADING_CHARS = 80


@dataclass(frozen=True)
class TextChunk:
    text: str
    page: int | None
    section: str
    category: str
    token_count: int


@dataclass
class _Section:
    heading: str
    parts: list[tuple[str, int | None, str]] = field(default_factory=list)  # text, page, category


def is_heading(element: Element) -> bool:
    # unstructured labels many short lines of plain text as Title; a real heading is short and does
    # not end like a sentence.
    text = element.text.strip()
    return element.category == "Title" and len(text) <= _MAX_HEADING_CHARS and not _SENTENCE_END.search(text)


class StructuredChunker:
    def __init__(self, count_tokens: Callable[[str], int], *, chunk_tokens: int, overlap_tokens: int) -> None:
        if overlap_tokens >= chunk_tokens:
            raise ValueError("chunk overlap must be smaller than the chunk size")
        self._count = count_tokens
        self._splitter = RecursiveCharacterTextSplitter(
            separators=SEPARATORS,
            keep_separator="end",
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            length_function=count_tokens,
            strip_whitespace=True,
        )

    def split(self, document: LoadedDocument) -> list[TextChunk]:
        chunks: list[TextChunk] = []
        for section in self._sections(document):
            chunks.extend(self._split_section(section))
        return chunks

    def _sections(self, document: LoadedDocument) -> list[_Section]:
        sections: list[_Section] = [_Section(heading="")]
        for element in document.elements:
            if is_heading(element):
                if element.text.lstrip("# ").strip() == document.title and not sections[-1].parts:
                    continue  # the document title is not a section of its own
                sections.append(_Section(heading=element.text.lstrip("# ").strip()))
            else:
                current = sections[-1]
                if current.parts and element.page != current.parts[-1][1]:
                    # A new page starts a new chunk, so that every chunk cites the page it is on.
                    current = _Section(heading=current.heading)
                    sections.append(current)
                current.parts.append((element.text, element.page, element.category))
        return [s for s in sections if s.parts]

    def _split_section(self, section: _Section) -> list[TextChunk]:
        # Join the section's elements and remember where each page starts, so a chunk gets the page
        # on which its text begins.
        text = ""
        page_starts: list[tuple[int, int | None]] = []
        for part, page, _ in section.parts:
            if text:
                text += "\n\n"
            page_starts.append((len(text), page))
            text += part
        category = section.parts[0][2] if len({c for _, _, c in section.parts}) == 1 else "CompositeElement"
        out: list[TextChunk] = []
        cursor = 0
        for piece in self._splitter.split_text(text):
            start = text.find(piece, cursor)
            if start < 0:
                start = cursor
            else:
                cursor = start + 1
            page = next((p for off, p in reversed(page_starts) if off <= start), page_starts[0][1])
            body = f"{section.heading}\n{piece}" if section.heading else piece
            out.append(
                TextChunk(
                    text=body,
                    page=page,
                    section=section.heading,
                    category=category,
                    token_count=self._count(body),
                )
            )
        return out
