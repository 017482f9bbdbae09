"""Structure-aware chunking sized in tokens of the embedding model's tokenizer.

A heading starts a new section and a page break starts a new chunk; each section is split at paragraph,
then Chinese/English sentence boundaries, then clause boundaries (langchain's RecursiveCharacterTextSplitter),
and every chunk carries its heading path so that it reads (and embeds) on its own. Tables are chunked by
rows, rendered as Markdown, and every chunk of a table repeats the header row; a row is never split.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bs4 import BeautifulSoup
from langchain_text_splitters import RecursiveCharacterTextSplitter

from ingest.elements import Element
from ingest.loaders import LoadedDocument, readable_title

# Ordered from the strongest boundary to the weakest; sentence ends of both languages come before
# clause marks so that a chunk ends at a full stop whenever the size allows.
SEPARATORS = ["\n\n", "\n", "。", "！", "？", ". ", "! ", "? ", "；", "; ", "，", ", ", " ", ""]
_SENTENCE_END = re.compile(r"[.!?。！？:：;；]$")
_MAX_HEADING_CHARS = 80
PATH_SEPARATOR = " > "


@dataclass(frozen=True)
class TextChunk:
    text: str
    page: int | None
    section: str
    category: str
    token_count: int


@dataclass
class _Section:
    path: list[str]
    parts: list[Element] = field(default_factory=list)

    @property
    def heading(self) -> str:
        return PATH_SEPARATOR.join(self.path)


def is_heading(element: Element) -> bool:
    # unstructured labels many short lines of plain text as Title; a real heading is short and does
    # not end like a sentence.
    text = element.text.strip()
    # A garbled heading ("n u J", a rotated or copy-protected page) would label every chunk under it.
    return (
        element.category == "Title"
        and len(text) <= _MAX_HEADING_CHARS
        and not _SENTENCE_END.search(text)
        and readable_title(text)
    )


def table_rows(html: str) -> list[list[str]]:
    soup = BeautifulSoup(html, "html.parser")
    rows = []
    for tr in soup.find_all("tr"):
        cells = [" ".join(td.get_text(" ").split()) for td in tr.find_all(["td", "th"])]
        if any(cells):
            rows.append(cells)
    return rows


def markdown_row(cells: list[str], width: int) -> str:
    padded = cells + [""] * (width - len(cells))
    return "| " + " | ".join(c.replace("|", "\\|") for c in padded) + " |"


class StructuredChunker:
    def __init__(self, count_tokens: Callable[[str], int], *, chunk_tokens: int, overlap_tokens: int) -> None:
        if overlap_tokens >= chunk_tokens:
            raise ValueError("chunk overlap must be smaller than the chunk size")
        self._count = count_tokens
        self._chunk_tokens = chunk_tokens
        self._splitter = RecursiveCharacterTextSplitter(
            separators=SEPARATORS,
            keep_separator="end",
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            length_function=count_tokens,
            strip_whitespace=True,
        )

    def split(self, document: LoadedDocument) -> list[TextChunk]:
        return self.session(document.title).feed(document.elements)

    def session(self, title: str, *, title_is_section: bool = False) -> ChunkSession:
        """Chunk a document that arrives in batches of elements (pages of a large PDF).

        `title_is_section`: the heading that repeats the document title heads a section like any other
        (slides: the first slide's title is the deck's title and also the only heading of that slide)."""
        return ChunkSession(self, "" if title_is_section else title)

    # -- used by ChunkSession ----------------------------------------------------------------------
    def split_section(self, section: _Section) -> list[TextChunk]:
        out: list[TextChunk] = []
        run: list[Element] = []
        for element in section.parts:
            if element.category == "Table" and element.html:
                out.extend(self._split_text(section, run))
                run = []
                out.extend(self._split_table(section, element))
            else:
                run.append(element)
        out.extend(self._split_text(section, run))
        return out

    def _split_text(self, section: _Section, parts: list[Element]) -> list[TextChunk]:
        if not parts:
            return []
        # Join the elements and remember where each page starts, so a chunk gets the page on which
        # its text begins.
        text = ""
        page_starts: list[tuple[int, int | None]] = []
        for part in parts:
            if text:
                text += "\n\n"
            page_starts.append((len(text), part.page))
            text += part.text
        categories = {p.category for p in parts}
        category = parts[0].category if len(categories) == 1 else "CompositeElement"
        out: list[TextChunk] = []
        cursor = 0
        for piece in self._splitter.split_text(text):
            start = text.find(piece, cursor)
            if start < 0:
                start = cursor
            else:
                cursor = start + 1
            page = next((p for off, p in reversed(page_starts) if off <= start), page_starts[0][1])
            out.append(self._chunk(section, piece, page, category))
        return out

    def _split_table(self, section: _Section, table: Element) -> list[TextChunk]:
        assert table.html is not None
        rows = table_rows(table.html)
        if not rows:
            return self._split_text(section, [Element(table.text, "Table", table.page)])
        width = max(len(r) for r in rows)
        header = markdown_row(rows[0], width) + "\n" + markdown_row(["---"] * width, width)
        budget = self._chunk_tokens - self._count(f"{section.heading}\n{header}")
        out: list[TextChunk] = []
        batch: list[str] = []
        used = 0
        for cells in rows[1:] or [[]]:
            line = markdown_row(cells, width) if cells else ""
            cost = self._count(line) + 1
            if batch and used + cost > budget:
                out.append(self._chunk(section, header + "\n" + "\n".join(batch), table.page, "Table"))
                batch, used = [], 0
            if line:
                batch.append(line)
                used += cost
        out.append(self._chunk(section, header + ("\n" + "\n".join(batch) if batch else ""), table.page, "Table"))
        return out

    def _chunk(self, section: _Section, body: str, page: int | None, category: str) -> TextChunk:
        text = f"{section.heading}\n{body}" if section.heading else body
        return TextChunk(
            text=text, page=page, section=section.heading, category=category, token_count=self._count(text)
        )


class ChunkSession:
    """Chunks one document batch by batch; the heading path carries over from one batch to the next."""

    def __init__(self, chunker: StructuredChunker, title: str) -> None:
        self._chunker = chunker
        self._title = title.strip()  # "" when the title heading is a section of its own
        self._path: list[str] = []
        self._levels: list[int] = []
        self._seen_content = False

    def feed(self, elements: Iterable[Element]) -> list[TextChunk]:
        sections: list[_Section] = [_Section(path=list(self._path))]
        for element in elements:
            if is_heading(element):
                text = element.text.lstrip("# ").strip()
                if text == self._title and not self._seen_content and not self._path:
                    continue  # the document title is not a section of its own
                self._path = self._descend(text, element.depth)
                sections.append(_Section(path=list(self._path)))
                continue
            current = sections[-1]
            if current.parts and element.page != current.parts[-1].page:
                # A new page starts a new chunk, so that every chunk cites the page it is on.
                current = _Section(path=current.path)
                sections.append(current)
            current.parts.append(element)
            self._seen_content = True
        return [c for s in sections if s.parts for c in self._chunker.split_section(s)]

    def _descend(self, heading: str, depth: int | None) -> list[str]:
        # A heading closes every open heading at its level or deeper. Without a level from the format
        # (PDF), a heading is a sibling of the previous one.
        if depth is None:
            depth = self._levels[-1] if self._levels else 0
        while self._levels and self._levels[-1] >= depth:
            self._levels.pop()
            self._path.pop()
        self._levels.append(depth)
        return [*self._path, heading]
