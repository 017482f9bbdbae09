"""PDFs page batch by page batch: the text layer through unstructured where it is sound, OCR where not.

A 500-page PDF is never parsed in one go: pages are handed to unstructured a batch at a time (as a small
PDF of just those pages), so progress is reported per page and memory stays flat. A page whose text layer
is empty, or garbled (mojibake, U+FFFD, private-use glyphs from fonts without a Unicode map), is rendered
and OCRed instead.

Rotated pages: pdfminer (under unstructured) lays text out in display space, so a page whose text runs
up or down the displayed page (a `/Rotate 90` page, or text drawn turned on the canvas) comes out one
character per line ("R o"). Each page's `/Rotate` is set, in the copy handed to unstructured, to the
rotation under which its characters read left to right (from pdfium's character angles); a page whose
text still comes out in single characters is rendered (pdfium applies the rotation) and OCRed, and
tesseract's orientation detection turns it upright.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from pypdf import PdfReader, PdfWriter
from pypdf.errors import FileNotDecryptedError, PdfReadError

from core.text import is_wide
from ingest.elements import Element, from_unstructured, paragraphs
from ingest.errors import CorruptFile, EncryptedFile, TooManyPixels
from ingest.ocr import DEFAULT_MAX_PIXELS, TesseractOCR

log = logging.getLogger(__name__)

_MIN_PAGE_CHARS = 20
# Characters that mark a text layer as mojibake when common in it: Latin-1 letters that UTF-8 read as
# cp1252 produces (Ã, Â, â€), box drawing and control/format characters.
_MOJIBAKE = set("ÃÂâ€™œ�")
# A page whose words are mostly lone letters is text laid out across its direction of writing (read one
# character per line, that share is about 0.9; a page of formulas, "f ( x ) = a x + b", stays near 0.5).
_MAX_FRAGMENTED = 0.7
_MIN_WORDS_TO_JUDGE = 6
# Characters sampled per page to find the direction its text runs in.
_ANGLE_SAMPLES = 400


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


def fragmented_share(text: str) -> float:
    """Share of the words that are a single letter: near 1.0 for text read one character per line.

    Digits are not counted (a table of small numbers is sound text), nor are Chinese characters: Chinese
    that puts spaces between its characters is still readable."""
    words = text.split()
    if len(words) < _MIN_WORDS_TO_JUDGE:
        return 0.0
    lone = sum(1 for w in words if len(w) == 1 and w.isalpha() and not is_wide(w))
    return lone / len(words)


def upright_rotation(angles: list[float], rotation: int) -> int:
    """The page `/Rotate` (0, 90, 180, 270) under which characters at these angles read left to right.

    `angles` are the characters' angles as pdfium reports them: radians, clockwise (its device space has
    y pointing down), so text drawn running up the page is at 270°; a negative angle is "unknown".
    `/Rotate` turns the displayed page clockwise, so that text needs `/Rotate 90`."""
    quarters = Counter(-round(math.degrees(a) / 90) % 4 for a in angles if a >= 0)
    if not quarters:
        return rotation
    return quarters.most_common(1)[0][0] * 90


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
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.path = path
        self._max_pixels = max_pixels
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
        self.metadata_title = _metadata_title(self._reader)
        try:
            self._pdfium = pdfium.PdfDocument(str(path), password="")
        except pdfium.PdfiumError as exc:
            raise CorruptFile(f"{path.name} is not a readable PDF: {exc}") from exc
        self.ocr_pages = 0
        self.turned_pages = 0  # pages whose /Rotate was changed so that their text reads left to right

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
        by_page: dict[int, list[Element]] = {n + 1: [] for n in numbers}
        if text_pages:
            for element in self._partition_pages(text_pages):
                if element.page is not None:
                    by_page.setdefault(element.page, []).append(element)
        for n in text_pages:
            # Turning the page did not help (text drawn at an odd angle, stacked letters): read the image.
            text = "\n".join(e.text for e in by_page.get(n + 1, []))
            if fragmented_share(text) > _MAX_FRAGMENTED:
                if self._ocr.available:
                    log.info("%s page %d: text layer reads one character at a time; OCR instead", self.path.name, n + 1)
                    scanned.append(n)
                else:
                    log.warning("%s page %d: text layer reads one character at a time and OCR is unavailable",
                                self.path.name, n + 1)  # fmt: skip
        for n in scanned:
            by_page[n + 1] = self._ocr_page(n)
        return [e for n in sorted(by_page) for e in by_page[n]]

    def _partition_pages(self, numbers: list[int]) -> list[Element]:
        writer = PdfWriter()
        for n in numbers:
            page = writer.add_page(self._reader.pages[n])
            upright = self._upright_rotation(n, page.rotation % 360)
            if upright != page.rotation % 360:
                log.info("%s page %d: text runs at /Rotate %d; read it turned", self.path.name, n + 1, upright)
                page.rotation = upright
                self.turned_pages += 1
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

    def _upright_rotation(self, n: int, rotation: int) -> int:
        textpage = self._pdfium[n].get_textpage()
        count = textpage.count_chars()
        step = max(1, count // _ANGLE_SAMPLES)
        # Spaces and line breaks that pdfium inserts have no glyph and report an angle of 0 (or -1).
        angles = [
            pdfium_c.FPDFText_GetCharAngle(textpage.raw, i)
            for i in range(0, count, step)
            if not chr(pdfium_c.FPDFText_GetUnicode(textpage.raw, i)).isspace()
            and not pdfium_c.FPDFText_IsGenerated(textpage.raw, i)
        ]
        return upright_rotation(angles, rotation)

    def _ocr_page(self, n: int) -> list[Element]:
        page = self._pdfium[n]
        # Pages are rendered one at a time; a page whose media box would render huge (a poster, a forged
        # box) is refused before a single pixel is allocated.
        width, height = (round(side * self._scale) for side in page.get_size())
        if width * height > self._max_pixels:
            raise TooManyPixels(
                f"{self.path.name}: page {n + 1} would render at {width}x{height} pixels, over the budget of "
                f"{self._max_pixels:,} pixels per page"
            )
        image = page.render(scale=self._scale).to_pil()
        self.ocr_pages += 1
        log.info("OCR %s page %d", self.path.name, n + 1)
        return [Element(text=p, category="NarrativeText", page=n + 1) for p in paragraphs(self._ocr.read(image))]


def _metadata_title(reader: PdfReader) -> str | None:
    """The Info dictionary's /Title, the fallback when the first lines of the text make no title."""
    try:
        meta = reader.metadata
        title = meta.title if meta is not None else None
    except (PdfReadError, ValueError, KeyError, TypeError):
        return None  # a broken Info dictionary costs the fallback title, not the document
    return (str(title).strip() or None) if title is not None else None
