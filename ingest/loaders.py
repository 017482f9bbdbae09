"""Parse files into elements (text, category, page, heading depth, tables), choosing a strategy per file.

- PDF: page batches; text layer through unstructured `fast`, empty or garbled pages through OCR.
- Images: OCR (tesseract eng/chi_sim).
- DOCX, PPTX, XLSX, CSV/TSV, HTML, Markdown, TXT, EML, MSG, EPUB: unstructured `fast`.
- DOC, PPT, RTF, ODT: converted by LibreOffice first (a clear error when it is not installed).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest._spacy import use_packaged_spacy_model
from ingest.elements import Element, from_unstructured, paragraphs
from ingest.errors import ConverterMissing, CorruptFile, LoadError, NoText
from ingest.filetypes import KINDS, SUPPORTED_SUFFIXES, FileKind, check_file
from ingest.ocr import TesseractOCR, open_image
from ingest.pdf import PdfPages

__all__ = ["SUPPORTED_SUFFIXES", "DocumentLoader", "Element", "LoadError", "LoadedDocument", "ParsedDocument"]

log = logging.getLogger(__name__)

_CONVERT_TO = {".doc": "docx", ".rtf": "docx", ".odt": "docx", ".ppt": "pptx"}


@dataclass
class ParsedDocument:
    """A document being parsed: its page count when known up front, and its elements in batches."""

    path: Path
    kind: FileKind
    pages: int | None
    batches: Iterator[tuple[int | None, list[Element]]]  # (pages done so far, elements)


@dataclass
class LoadedDocument:
    path: Path
    title: str
    elements: list[Element] = field(default_factory=list)

    @property
    def pages(self) -> int | None:
        pages = [e.page for e in self.elements if e.page is not None]
        return max(pages) if pages else None


class DocumentLoader:
    """Loads every supported format with models that ship offline (no hub downloads)."""

    def __init__(
        self,
        *,
        max_file_bytes: int = 100 * 1024 * 1024,
        ocr: TesseractOCR | None = None,
        pdf_batch_pages: int = 8,
        min_text_quality: float = 0.9,
        convert_timeout_s: float = 180.0,
    ) -> None:
        use_packaged_spacy_model()
        # Import once at start-up: unstructured's first import takes seconds.
        from unstructured.partition.auto import partition
        from unstructured.partition.pdf import partition_pdf

        self._partition: Callable[..., list[Any]] = partition
        self._partition_pdf: Callable[..., list[Any]] = partition_pdf
        self._ocr = ocr or TesseractOCR()
        self._max_bytes = max_file_bytes
        self._pdf_batch = pdf_batch_pages
        self._min_quality = min_text_quality
        self._convert_timeout = convert_timeout_s
        self._soffice = shutil.which("soffice") or shutil.which("libreoffice")

    def check(self, path: Path) -> FileKind:
        """Cheap checks before any parsing: type, size, magic bytes."""
        if not path.is_file():
            raise LoadError(f"not a file: {path}")
        return check_file(path, max_bytes=self._max_bytes)

    def open(self, path: Path) -> ParsedDocument:
        kind = self.check(path)
        if kind.family == "pdf":
            pdf = PdfPages(
                path, partition_pdf=self._partition_pdf, ocr=self._ocr,
                batch_pages=self._pdf_batch, min_quality=self._min_quality,
            )  # fmt: skip
            return ParsedDocument(path=path, kind=kind, pages=pdf.pages, batches=pdf.batches())
        if kind.family == "image":
            return ParsedDocument(path=path, kind=kind, pages=None, batches=self._image_batches(path))
        if kind.family == "zip":
            raise LoadError(f"{path.name} is an archive: ingest it as a folder of files")
        return ParsedDocument(
            path=path, kind=kind, pages=None, batches=iter([(None, self._partition_file(path, kind))])
        )

    def load(self, path: Path) -> LoadedDocument:
        """The whole document at once (small files, tests); ingestion uses `open` to stream."""
        parsed = self.open(path)
        elements = [e for _, batch in parsed.batches for e in batch]
        if not elements:
            raise NoText(f"no text found in {path.name}")
        return LoadedDocument(path=path, title=title_of(path, elements), elements=elements)

    def _image_batches(self, path: Path) -> Iterator[tuple[int | None, list[Element]]]:
        frames = open_image(path)
        for index, frame in enumerate(frames, start=1):
            page = index if len(frames) > 1 else None
            yield (
                index,
                [Element(text=p, category="NarrativeText", page=page) for p in paragraphs(self._ocr.read(frame))],
            )

    def _partition_file(self, path: Path, kind: FileKind) -> list[Element]:
        if kind.needs_libreoffice:
            with tempfile.TemporaryDirectory(prefix="kb-convert-") as tmp:
                converted = self._convert(path, Path(tmp))
                return self._partition_native(converted, KINDS[converted.suffix])
        return self._partition_native(path, kind)

    def _partition_native(self, path: Path, kind: FileKind) -> list[Element]:
        kwargs: dict[str, Any] = {"filename": str(path), "strategy": "fast"}
        if kind.suffix in (".docx", ".pptx", ".xlsx", ".html", ".htm", ".md", ".markdown", ".epub"):
            kwargs["infer_table_structure"] = True
        try:
            raw = self._partition(**kwargs)
        except Exception as exc:
            raise CorruptFile(f"could not parse {path.name}: {type(exc).__name__}: {exc}") from exc
        return from_unstructured(raw)

    def _convert(self, path: Path, out_dir: Path) -> Path:
        if self._soffice is None:
            raise ConverterMissing(
                f"{path.suffix} files are unsupported without libreoffice (apt-get install libreoffice-writer-nogui "
                f"libreoffice-impress-nogui), or save {path.name} as {_CONVERT_TO[path.suffix.lower()]} and upload that"
            )
        target = _CONVERT_TO[path.suffix.lower()]
        # A private profile folder per call: two soffice processes sharing one profile block each other.
        profile = (out_dir / "profile").as_uri()
        cmd = [self._soffice, f"-env:UserInstallation={profile}", "--headless", "--convert-to", target,
               "--outdir", str(out_dir), str(path)]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=self._convert_timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise CorruptFile(f"LibreOffice did not convert {path.name} within {self._convert_timeout:.0f} s") from exc
        converted = out_dir / f"{path.stem}.{target}"
        if proc.returncode != 0 or not converted.is_file():
            detail = proc.stderr.decode(errors="replace").strip()[-300:]
            raise CorruptFile(f"LibreOffice could not convert {path.name}: {detail or 'no output'}")
        return converted


def title_of(path: Path, elements: list[Element]) -> str:
    for element in elements[:5]:
        if element.category == "Title" and len(element.text) <= 200:
            return element.text.lstrip("# ").strip()
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name
