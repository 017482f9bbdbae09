"""Parse files into elements (text, category, page, heading depth, tables), choosing a strategy per file.

- PDF: page batches; text layer through unstructured `fast` (turned pages read upright), empty or garbled
  pages, and pages whose text still reads one letter per line, through OCR.
- Images: OCR (tesseract eng/chi_sim).
- DOCX, PPTX, XLSX, CSV/TSV, HTML, Markdown, TXT, EML, MSG, EPUB: unstructured `fast`; each slide of a PPTX
  is headed by the title in its title placeholder (read with python-pptx), so a slide that holds a table
  is still found by its title.
- DOC, PPT, RTF, ODT: converted by LibreOffice first (a clear error when it is not installed).
- Title: the first heading, unless text extraction garbled it ("n u J"); then the PDF metadata title, else
  the file name.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from core.text import is_wide
from ingest._spacy import use_packaged_spacy_model
from ingest.elements import Element, from_unstructured, paragraphs
from ingest.errors import ConverterMissing, CorruptFile, LoadError, NoText
from ingest.filetypes import KINDS, SUPPORTED_SUFFIXES, FileKind, check_file
from ingest.ocr import DEFAULT_MAX_PIXELS, TesseractOCR, image_frames
from ingest.pdf import PdfPages, text_layer_quality

__all__ = ["SUPPORTED_SUFFIXES", "DocumentLoader", "Element", "LoadError", "LoadedDocument", "ParsedDocument"]

log = logging.getLogger(__name__)

# Below this share of clean characters a heading is mojibake, not a title (text_layer_quality).
_MIN_TITLE_QUALITY = 0.9
_SLIDES = (".pptx", ".ppt")
_CONVERT_TO = {".doc": "docx", ".rtf": "docx", ".odt": "docx", ".ppt": "pptx"}


@dataclass
class ParsedDocument:
    """A document being parsed: its page count when known up front, and its elements in batches."""

    path: Path
    kind: FileKind
    pages: int | None
    batches: Iterator[tuple[int | None, list[Element]]]  # (pages done so far, elements)
    metadata_title: str | None = None  # the title the file's metadata declares (PDF /Title)
    # Slides: every page opens with its own title, the first slide's (the document title) included.
    titled_pages: bool = False


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
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
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
        self._max_pixels = max_image_pixels
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
                batch_pages=self._pdf_batch, min_quality=self._min_quality, max_pixels=self._max_pixels,
            )  # fmt: skip
            return ParsedDocument(
                path=path, kind=kind, pages=pdf.pages, batches=pdf.batches(), metadata_title=pdf.metadata_title
            )
        if kind.family == "image":
            return ParsedDocument(path=path, kind=kind, pages=None, batches=self._image_batches(path))
        if kind.family == "zip":
            raise LoadError(f"{path.name} is an archive: ingest it as a folder of files")
        return ParsedDocument(
            path=path, kind=kind, pages=None, batches=iter([(None, self._partition_file(path, kind))]),
            titled_pages=kind.suffix in _SLIDES,
        )  # fmt: skip

    def load(self, path: Path) -> LoadedDocument:
        """The whole document at once (small files, tests); ingestion uses `open` to stream."""
        parsed = self.open(path)
        elements = [e for _, batch in parsed.batches for e in batch]
        if not elements:
            raise NoText(f"no text found in {path.name}")
        return LoadedDocument(path=path, title=title_of(path, elements, parsed.metadata_title), elements=elements)

    def _image_batches(self, path: Path) -> Iterator[tuple[int | None, list[Element]]]:
        # Frame by frame: a 300-page fax TIFF never sits in memory whole.
        frames = image_frames(path, max_pixels=self._max_pixels)
        first = next(frames, None)
        if first is None:
            return
        second = next(frames, None)
        numbered = second is not None
        index = 1
        for frame in (first, second):
            if frame is not None:
                yield index, self._frame_elements(frame, index if numbered else None)
                index += 1
        del first, second
        for frame in frames:
            yield index, self._frame_elements(frame, index)
            index += 1

    def _frame_elements(self, frame: Any, page: int | None) -> list[Element]:
        return [Element(text=p, category="NarrativeText", page=page) for p in paragraphs(self._ocr.read(frame))]

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
            titles = slide_titles(path) if kind.suffix == ".pptx" else {}
        except Exception as exc:
            raise CorruptFile(f"could not parse {path.name}: {type(exc).__name__}: {exc}") from exc
        elements = from_unstructured(raw)
        return headed_by_slide_titles(elements, titles) if titles else elements

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


def title_of(path: Path, elements: list[Element], metadata_title: str | None = None) -> str:
    """The first heading near the top; when that is garbled, the metadata title, else the file name."""
    for element in elements[:5]:
        if element.category == "Title" and len(element.text) <= 200:
            heading = element.text.lstrip("# ").strip()
            if readable_title(heading):
                return heading
            log.info("%s: first heading %r is garbled; title from metadata or file name", path.name, heading[:60])
            break
    if metadata_title and readable_title(metadata_title.strip()):
        return metadata_title.strip()
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name


def readable_title(text: str) -> bool:
    """False for a title that text extraction garbled: mostly lone letters ("n u J", "R o": a rotated or
    copy-protected page read one character per line) or mojibake and private-use glyphs."""
    if not text or text_layer_quality(text) < _MIN_TITLE_QUALITY:
        return False
    words = text.split()
    lone = sum(1 for w in words if len(w) == 1 and w.isalpha() and not is_wide(w))
    # More than two thirds: "Q & A" and "A B testing" stay titles.
    return not (lone >= 2 and lone * 3 > len(words) * 2)


def slide_titles(path: Path) -> dict[int, list[str]]:
    """Each slide's title (the paragraphs of its title placeholder), by slide number: unstructured's page."""
    from pptx import Presentation

    titles: dict[int, list[str]] = {}
    slides = Presentation(str(path)).slides
    for number, slide in enumerate(slides, start=1):
        shape = slide.shapes.title
        if shape is not None and shape.has_text_frame:
            lines = [" ".join(p.text.split()) for p in shape.text_frame.paragraphs]
            if any(lines):
                titles[number] = [line for line in lines if line]
    return titles


def headed_by_slide_titles(elements: list[Element], titles: dict[int, list[str]]) -> list[Element]:
    """Every slide's elements, its title first as a top-level heading, so each chunk of the slide carries it.

    unstructured orders a slide's shapes by position and may put the title after a table, or miss it;
    a title that is not first then heads no chunk, and the slide cannot be found by it."""
    out: list[Element] = []
    for page, group in groupby(elements, key=lambda e: e.page):
        slide = list(group)
        lines = titles.get(page, []) if page is not None else []
        if lines:
            # unstructured gives one Title per paragraph of the title placeholder; they become one heading.
            rest = [e for e in slide if not (e.category == "Title" and " ".join(e.text.split()) in lines)]
            slide = [Element(text=" ".join(lines), category="Title", page=page, depth=0), *rest]
        out.extend(slide)
    return out
