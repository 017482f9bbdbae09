"""Contextual chunk headers: the document title and heading path a chunk is matched with, never shown.

A chunk deep in a document ("The deadline is 30 days.") does not say what it is about; its document's
title and heading path do. The header is put in front of the chunk's text where it is matched (the text
embedded into the dense vector, the text BM25 analyses) while callers, the model and citations see the
chunk's text alone. Both the ingestion pipeline (what it embeds) and the store (what BM25 indexes, and
what it strips on reading) build it here, from fields the store keeps, so `kb reindex` rebuilds it too.
"""

from __future__ import annotations

from core.types import Chunk

HEADER_SEPARATOR = " > "
# Ends the header inside the store's analysed text field. Milvus' BM25 function reads one field, so a
# header BM25 matches must sit in the same field as the text; this ASCII record separator (which no
# chunk text keeps: `store_text` replaces it) marks where the text returned to callers begins.
HEADER_END = "\x1e"


def chunk_header(chunk: Chunk) -> str:
    """The title and heading path, each left out where the chunk's text already begins with it (the
    chunker puts the heading path on a chunk's first line)."""
    text = chunk.text.lstrip()
    parts = [part for part in (chunk.title.strip(), chunk.section.strip()) if part and not text.startswith(part)]
    # The title is often the heading path's first element (a document's one top heading).
    if len(parts) == 2 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    return HEADER_SEPARATOR.join(parts)


def with_header(chunk: Chunk) -> str:
    """The chunk's text with its header on a line before it: what is embedded when headers are on."""
    header = chunk_header(chunk)
    return f"{header}\n{chunk.text}" if header else chunk.text


def store_text(chunk: Chunk, *, header: bool) -> str:
    """What the store writes into its analysed text field: the text, after the header when `header`."""
    body = chunk.text.replace(HEADER_END, " ")
    head = chunk_header(chunk).replace(HEADER_END, " ") if header else ""
    return f"{head}\n{HEADER_END}{body}" if head else body


def stored_body(text: str) -> str:
    """The chunk's own text from what `store_text` wrote (with or without a header)."""
    _, sep, body = text.partition(HEADER_END)
    return body if sep else text
