"""PDFs page batch by page batch: the text layer through unstructured where it is sound, OCR where not.

A 500-page PDF is never parsed in one go: pages are handed to unstructured a batch at a time (as a small
PDF of just those pages), so progress is reported per page and memory stays flat. A page whose text layer
is empty, or garbled (mojibake, U+FFFD, private-use glyphs from fonts without a Unicode map), is rendered
and OCRed instead.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
from pypdf import PdfReader, PdfWriter
from pypdf.errors import FileNotDecryptedError, PdfReadError

from ingest.elements import Element, from_unstructured, paragraphs
from ingest.errors import CorruptFile, EncryptedFile
from ingest.ocr import TesseractOCR

log = logging.getLogger(__name__)

_MIN_PAGE_CHARS = 20
# Characters that mark a text layer as mojibake when common in it: Latin-1 letters that UTF-8 read as
# cp1252 produces (Ã, Â, â€), box drawing and control/format characters.
_MOJIBAKE = set("ÃÂâ€™œ�")


def text_layer_quality(text: str) -> float:
    """Share of the page's visible characters that look like real text (1.0 = clean)."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    bad = 0
    for c in visible:
        cat = unicodedata.category(c)
        if c == "\ufffd" or cat in ("Co", "Cs", "Cn", "Cc") or c in _MOJIBAKE:
            bad += 1
    return 1.0 - bad / len(visible)


class PdfPages:
    """Open a PDF once; yield its elements a batch of pages at a time."""

    def __init__(
        self,
        path: Path,
        *,
        partition_pdf: Callable[..., list[Any]],
        ocr: TesseractOCR,
        batch_pages: int = 8,
        min_quality: float = 0.9,
        ocr_dpi: int = 300,
    ) -> None:
        self.path = path
        self._partition = partition_pdf
        self._ocr = ocr
        self._batch = batch_pages
        self._min_quality = min_quality
        self._scale = ocr_dpi / 72
        try:
            self._reader = PdfReader(str(path))
            if self._reader.is_encrypted and not self._reader.decrypt(""):
                raise EncryptedFile(f"{path.name} is password-protected; remove the password and upload it again")
            self.pages = len(self._reader.pages)
        except EncryptedFile:
            raise
        except FileNotDecryptedError as exc:
            raise EncryptedFile(f"{path.name} is password-protected; remove the password and upload it again") from exc
        except (PdfReadError, ValueError, KeyError, OSError) as exc:
            raise CorruptFile(f"{path.name} is not a readable PDF: {exc}") from exc
        if self.pages == 0:
            raise CorruptFile(f"{path.name} has no pages")
        try:
            self._pdfium = pdfium.PdfDocument(str(path), password="")
        except pdfium.PdfiumError as exc:
            raise CorruptFile(f"{path.name} is not a readable PDF: {exc}") from exc
        self.ocr_pages = 0

    def batches(self) -> Iterator[tuple[int, list[Element]]]:
        """(last page number of the batch, its elements), in page order."""
        try:
            for first in range(0, self.pages, self._batch):
                numbers = list(range(first, min(first + self._batch, self.pages)))
                yield numbers[-1] + 1, self._batch_elements(numbers)
        finally:
            self._pdfium.close()

    def _batch_elements(self, numbers: list[int]) -> list[Element]:
        text_pages: list[int] = []
        scanned: list[int] = []
        for n in numbers:
            layer = self._pdfium[n].get_textpage().get_text_range()
            if len(layer.strip()) >= _MIN_PAGE_CHARS and text_layer_quality(layer) >= self._min_quality:
                text_pages.append(n)
            else:
                scanned.append(n)
        by_page: dict[int, list[Element]] = {n: [] for n in numbers}
        if text_pages:
            for element in self._partition_pages(text_pages):
                if element.page is not None:
                    by_page.setdefault(element.page, []).append(element)
        for n in scanned:
            by_page[n + 1] = self._ocr_page(n)
        return [e for n in sorted(by_page) for e in by_page[n]]

    def _partition_pages(self, numbers: list[int]) -> list[Element]:
        writer = PdfWriter()
        for n in numbers:
            writer.add_page(self._reader.pages[n])
        buffer = BytesIO()
        writer.write(buffer)
        buffer.seek(0)
        try:
            raw = self._partition(file=buffer, strategy="fast", languages=["eng", "chi_sim"])
        except Exception as exc:
            raise CorruptFile(f"{self.path.name}: pages {numbers[0] + 1}-{numbers[-1] + 1} unreadable: {exc}") from exc
        out = []
        for element in from_unstructured(raw):
            local = element.page or 1
            out.append(element.on_page(numbers[local - 1] + 1 if local <= len(numbers) else numbers[-1] + 1))
        return out

    def _ocr_page(self, n: int) -> list[Element]:
        image = self._pdfium[n].render(scale=self._scale).to_pil()
        self.ocr_pages += 1
        log.info("OCR %s page %d", self.path.name, n + 1)
        return [Element(text=p, category="NarrativeText", page=n + 1) for p in paragraphs(self._ocr.read(image))]
