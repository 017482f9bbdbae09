"""Parse files into elements (text, category, page) with unstructured."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest._spacy import use_packaged_spacy_model

log = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".pdf", ".docx", ".html", ".htm"})


class LoadError(ValueError):
    """A file that cannot be parsed; the message says why in words an admin can act on."""


@dataclass(frozen=True)
class Element:
    text: str
    category: str
    page: int | None = None


@dataclass
class LoadedDocument:
    path: Path
    title: str
    elements: list[Element] = field(default_factory=list)

    @property
    def pages(self) -> int | None:
        pages = [e.page for e in self.elements if e.page is not None]
        return max(pages) if pages else None


class UnstructuredLoader:
    """Parses with `strategy="fast"`, the one that needs no hub models."""

    def __init__(self) -> None:
        use_packaged_spacy_model()
        # Import once at start-up: unstructured's first import takes seconds.
        from unstructured.partition.auto import partition

        self._partition = partition

    def load(self, path: Path) -> LoadedDocument:
        suffix = path.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise LoadError(f"unsupported file type {suffix or '(none)'}: {path.name}")
        if not path.is_file():
            raise LoadError(f"not a file: {path}")
        if path.stat().st_size == 0:
            raise LoadError(f"empty file: {path.name}")
        kwargs: dict[str, Any] = {"filename": str(path), "strategy": "fast"}
        if suffix == ".pdf":
            kwargs["languages"] = ["eng", "chi_sim"]
        try:
            raw = self._partition(**kwargs)
        except Exception as exc:  # unstructured raises many unrelated types for bad files
            raise LoadError(f"could not parse {path.name}: {exc}") from exc
        elements = [
            Element(text=str(e.text).strip(), category=str(e.category), page=e.metadata.page_number)
            for e in raw
            if str(e.text).strip()
        ]
        if not elements:
            raise LoadError(f"no text found in {path.name} (a scanned file needs OCR)")
        return LoadedDocument(path=path, title=_title(path, elements), elements=elements)


def _title(path: Path, elements: list[Element]) -> str:
    first = elements[0]
    if first.category == "Title" and len(first.text) <= 200:
        return first.text.lstrip("# ").strip()
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name
